"""`attn explore`: the interactive explorer of attention matrices, in the terminal (Textual).

`session.Explorer` computes what the screens show (compute/ runs, analysis/ statistics);
`app.ExploreApp` draws it with present/'s renderables and answers keys. Textual is imported only
here, so that the other commands never load it.
"""
