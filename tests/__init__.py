import pytest

# the shared helpers assert too: let pytest show their failing values like a test module's
pytest.register_assert_rewrite("tests.helpers")
