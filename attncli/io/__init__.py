"""Files in and out: formats and their headers, reading a path or `-` into NumPy, atomic writing.

Nothing here prints, exits or imports torch; every problem is an `InputError`, `UsageError` or
`OutputError` naming the file or option.
"""
