#!/bin/sh
# h11 compiled with mypyc, measured on the worker's own HTTP/1.1 path: one
# of the parser options weighed against httptools (bench/parser_micro.py).
#
#     sh bench/h11_mypyc.sh        # ~2 minutes; needs gcc and the Python headers
#
# mypyc compiles five of h11's ten modules as they are (_abnf, _headers
# after one annotation, _readers, _receivebuffer, _writers); _connection,
# _state, _events and _util do not compile without rewriting (sentinel
# classes built by a metaclass, a bytes subclass, dataclass __hash__), so
# they stay interpreted.  The compiled copy lives in a scratch directory
# and is put first on PYTHONPATH for one parser_micro.py run beside the
# stock h11 run.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$here/.venv/bin/python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
version=$("$python" -c "import h11; print(h11.__version__)")
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q "mypy==1.13.0" setuptools "h11==$version"
src=$("$work/venv/bin/python" -c "import h11, os; print(os.path.dirname(h11.__file__))")
mkdir "$work/src"
cp -r "$src" "$work/src/h11"
rm -rf "$work/src/h11/tests" "$work/src/h11/__pycache__"
cd "$work/src"
# mypyc needs the one local variable typed that mypy infers as None.
sed -i 's/^from typing import AnyStr,/from typing import AnyStr, Optional,/; s/^    seen_content_length = None$/    seen_content_length: Optional[bytes] = None/' h11/_headers.py
for module in _abnf _headers _readers _receivebuffer _writers; do
    rm -rf build
    "$work/venv/bin/mypyc" "h11/$module.py" > /dev/null
done
cd "$here"
echo "== stock h11 $version"
"$python" bench/parser_micro.py --quick
echo "== h11 $version, five modules compiled with mypyc"
PYTHONPATH="$work/src" "$python" -c "import h11._readers as m; assert m.__file__.endswith('.so'), m.__file__"
PYTHONPATH="$work/src" "$python" bench/parser_micro.py --quick
