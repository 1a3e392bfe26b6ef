"""Only for the optional compiled build; everything else is in pyproject.toml.

With TRIOSERVE_COMPILE=1 the sans-I/O HTTP core (the request parser, the response writer and
the protocol state machine, which import nothing but the standard library) is compiled with
mypyc, from the same typed source: about 10% more hello-world requests per second, the same
behaviour (.ci/run runs the whole test suite against it). It needs mypy and a C compiler at
build time, hence opt-in; see docs/performance.md#compiled-build.
"""

import os

from setuptools import setup

COMPILED = ["trioserve/_request.py", "trioserve/_response.py", "trioserve/_protocol.py"]

if os.environ.get("TRIOSERVE_COMPILE") == "1":
    from mypyc.build import mypycify

    # The compiled modules import only the standard library and each other; the rest of the
    # package is type-checked by mypy too, and its dependencies (trio...) may not be installed
    # yet in the build environment.
    setup(
        ext_modules=mypycify(
            ["--ignore-missing-imports", "--follow-imports=silent", *COMPILED], opt_level="3"
        )
    )
else:
    setup()
