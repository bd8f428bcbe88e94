"""Coverage-guided fuzzing (atheris, libFuzzer) of one target: ``message`` (the SIP
message parser) or ``digest`` (the digest Authorization parser and checker).

Run: ``.venv/bin/python tests/fuzz/run.py TARGET [libFuzzer options] [corpus dirs]``,
e.g. ``message -max_total_time=60 -dict=tests/fuzz/sip.dict var/fuzz-message``: the
seeds (``targets.seeds``) are added as a corpus unless an input file is given. An
exception other than ``SipError`` or a failed check is a crash: libFuzzer writes the
input to ``crash-<sha1>`` (``-artifact_prefix=`` picks the folder) and exits non-zero.
"""

import os
import sys
import tempfile

import atheris

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

with atheris.instrument_imports(include=["sipcore"]):
    from tests.fuzz.targets import check_credentials, check_message, write_seeds

TARGETS = {"message": check_message, "digest": check_credentials}


def main() -> None:
    """Fuzz the target the first argument names with the rest's libFuzzer options."""
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {'|'.join(TARGETS)} [libFuzzer options] [corpus dirs]")
    target = sys.argv[1]
    argv = [sys.argv[0], *sys.argv[2:]]
    if not any(os.path.isfile(a) for a in argv[1:] if not a.startswith("-")):
        seeds = tempfile.mkdtemp(prefix="tandem-seeds-")
        write_seeds(target, seeds)
        argv.append(seeds)
    atheris.Setup(argv, TARGETS[target])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
