"""Coverage-guided fuzzing (atheris, libFuzzer) of the digest Authorization parser and checker.

Run: ``.venv/bin/python tests/fuzz/fuzz_digest.py [libFuzzer options] [corpus dirs]``,
e.g. ``-max_total_time=60 -dict=tests/fuzz/sip.dict var/fuzz-digest``: the seeds
(``targets.seeds``) are added as a corpus unless an input file is given. An exception other
than ``SipError`` or a failed check is a crash: libFuzzer writes the input to
``crash-<sha1>`` (``-artifact_prefix=`` picks the folder) and exits non-zero.
"""

import os
import sys
import tempfile

import atheris

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

with atheris.instrument_imports(include=["sipcore"]):
    from tests.fuzz.targets import check_credentials, write_seeds


def main() -> None:
    """Fuzz ``check_credentials`` with the command line's libFuzzer options."""
    argv = list(sys.argv)
    if not any(os.path.isfile(a) for a in argv[1:] if not a.startswith("-")):
        seeds = tempfile.mkdtemp(prefix="tandem-seeds-")
        write_seeds("digest", seeds)
        argv.append(seeds)
    atheris.Setup(argv, check_credentials)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
