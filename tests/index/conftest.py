from tests.fixtures.gnupg import home, keyed, make_home  # noqa: F401
