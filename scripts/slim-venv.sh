#!/bin/sh
# Slim an installed venv for the container image (Dockerfile builder stages): what `lifecycle run` and
# `lifecycle demo` never load goes. Usage: slim-venv.sh /opt/venv
#
# * pip, setuptools and wheel (nothing is installed at run time), bytecode caches (the image runs with
#   PYTHONDONTWRITEBYTECODE), test suites and C headers/sources shipped inside wheels;
# * when the fast extra is installed: pyarrow's Flight, S3/GCS/Azure/HDFS filesystems and C++ test module
#   (connectorx hands polars its Arrow tables in memory; no file system or RPC is used); its three
#   identical libarrow_python copies become one file and two links;
# * Babel's locale data other than English and Russian;
# * phonenumbers' geocoding data (adapters/ads/normalize.py parses and formats numbers only);
# * symbols in shared libraries (strip --strip-unneeded, when binutils is there), except the ones
#   auditwheel bundled.
set -eu
venv=${1:?usage: slim-venv.sh VENV}
py="$venv/bin/python"
site=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
"$py" -m pip uninstall -q -y pip setuptools wheel >/dev/null 2>&1 || true
find "$venv" -name '__pycache__' -type d -prune -exec rm -rf {} +
find "$site" -type d \( -name tests -o -name test \) -prune -exec rm -rf {} +
if [ -d "$site/pyarrow" ]; then
  cd "$site/pyarrow"
  rm -rf include src
  find . \( -name '*.pyx' -o -name '*.pxd' -o -name '*.pxi' -o -name '*.h' -o -name '*.cc' \) -delete
  rm -f libarrow_flight.so* libarrow_python_flight.so* _flight*.so flight.py \
        libarrow_s3.so* _s3fs*.so _gcsfs*.so _azurefs*.so _hdfs*.so _pyarrow_cpp_tests*.so
  for f in libarrow_python.so libarrow_python_parquet_encryption.so; do
    real=$(ls "$f".* 2>/dev/null | head -n1 || true)
    if [ -n "$real" ] && [ -f "$f" ] && [ ! -L "$f" ]; then
      for copy in "$f" $(ls "$f".* | tail -n +2); do
        if cmp -s "$real" "$copy"; then ln -sf "$(basename "$real")" "$copy"; fi
      done
    fi
  done
  cd - >/dev/null
fi
rm -rf "$site/phonenumbers/geodata"
# Babel's CLDR data for the two languages the dashboard speaks (and root, which every locale inherits from)
if [ -d "$site/babel/locale-data" ]; then
  find "$site/babel/locale-data" -name '*.dat' ! -name 'root.dat' ! -name 'en.dat' ! -name 'en_*.dat' \
    ! -name 'ru.dat' ! -name 'ru_*.dat' -delete
fi
if command -v strip >/dev/null; then
  # not the libraries auditwheel bundled in <package>.libs/: patchelf rewrote them, and strip would break
  # their program headers ("ELF load command address/offset not page-aligned")
  find "$venv" -type f \( -name '*.so' -o -name '*.so.*' \) -not -path '*.libs/*' \
    -exec strip --strip-unneeded {} + 2>/dev/null || true
fi
# what is left must still import
"$py" -c 'import polars, sqlalchemy, psycopg, phonenumbers, pydantic, aiohttp, rich, lark
from babel.numbers import format_decimal; format_decimal(1234.5, locale="ru"); format_decimal(1234.5, locale="en")'
