"""A plug-in module that fails while it is imported (a dependency it needs is missing)."""

raise ImportError("broken needs the package 'imaginary_dependency', which is not installed")
