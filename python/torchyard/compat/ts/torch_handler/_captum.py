"""Captum, which the built-in handlers explain with, imported only when an explanation is
asked for: without it a handler still predicts, and `/explanations` answers that Captum is
missing."""


def captum_attr():
    """`captum.attr`, or an error that says to install Captum."""
    try:
        import captum.attr
    except ImportError as error:
        raise RuntimeError("explanations need Captum: install it (pip install captum) into "
                           "the workers' Python environment") from error
    return captum.attr
