"""Request and response bodies of the API (pydantic), one module per resource; tables live in models.py."""
