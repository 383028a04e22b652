"""The `fedalign` command line: the composition root, the one package that may import every other.

One module per command or command group (`cli.main` assembles them). A command imports the side it
drives (`backend`, `workers`) when it runs, not when the command line is built: ``fedalign health`` (a
container's probe, every 30 s) and ``fedalign --help`` load neither, and ``fedalign node run`` loads no
server code.
"""
