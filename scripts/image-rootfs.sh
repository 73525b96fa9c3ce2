#!/bin/sh
# Assemble the production image's root file system (Dockerfile, builder stage; the image is FROM scratch
# with this tree copied in). Usage: image-rootfs.sh VENV DEST
#
# What goes in, and nothing else (no shell, no package manager, no apt or dpkg state):
# * the interpreter the venv runs (its chain of links kept: /usr/bin/python3.11 on a Debian base,
#   /usr/local/bin/python3.11 on python:3.11-slim), its standard library less what a server never
#   imports (tests, IDLE, tkinter, turtledemo, ensurepip, lib2to3, pydoc's data, bytecode caches, the
#   build configuration, site-packages), and lib-dynload;
# * the venv itself;
# * every shared library that the interpreter, lib-dynload and the venv's extension modules load (ldd),
#   with its links, the dynamic loader and an ld.so.cache for them (libpython under /usr/local/lib);
# * CA certificates and OpenSSL's links to them, the time zone database (zoneinfo), nsswitch.conf,
#   ld.so.conf, /etc/passwd and /etc/group with root and the user `lifecycle` (10001), /tmp (sticky).
#   (/data, the state volume owned by 10001, is the Dockerfile's COPY --chown: a COPY keeps the owner of
#   a folder that is there already.)
# The image's Python imports and TLS are checked at the end, inside DEST (chroot).
set -eu
PATH="$PATH:/usr/sbin:/sbin"   # ldconfig and chroot (a base image's PATH may leave sbin out)
venv=${1:?usage: image-rootfs.sh VENV DEST}
dest=${2:?usage: image-rootfs.sh VENV DEST}
py="$venv/bin/python"
mkdir -p "$dest"

# the top-level links of a merged-/usr base (bin -> usr/bin, lib64 -> usr/lib64, ...), as they are here
for d in bin sbin lib lib32 lib64 libx32; do
  if [ -L "/$d" ]; then ln -sfn "$(readlink "/$d")" "$dest/$d"; fi
done

# copy_path PATH: PATH into DEST at the same place; a link stays a link and its target is copied too
copy_path() {
  p=$1
  while :; do
    dir=$(cd "$(dirname "$p")" && pwd -P)
    p="$dir/$(basename "$p")"
    if [ ! -e "$dest$p" ] && [ ! -L "$dest$p" ]; then
      mkdir -p "$dest$dir"
      cp -a "$p" "$dest$dir/"
    fi
    [ -L "$p" ] || break
    target=$(readlink "$p")
    case $target in /*) p=$target ;; *) p="$dir/$target" ;; esac
  done
}

# shared_libs FILE...: the libraries ldd resolves for FILEs, and the loader, one a line in $dest.libs;
# a library that is not found stops the build. (Not run on the libraries auditwheel bundled in a wheel's
# <package>.libs/: they find each other through the RPATH of the extension that loads them, and ldd on
# that extension lists them and what they need.)
shared_libs() {
  : >"$dest.libs"
  for f in "$@"; do
    out=$(ldd "$f" 2>&1) || continue   # "not a dynamic executable": nothing to load
    if printf '%s\n' "$out" | grep -q 'not found'; then
      echo "image-rootfs: $f needs a library that is not here:" >&2
      printf '%s\n' "$out" | grep 'not found' >&2
      exit 1
    fi
    printf '%s\n' "$out" \
      | sed -nE 's/.*=> (\/[^ ]+) \(0x.*/\1/p; s/^[[:space:]]*(\/[^ ]+) \(0x.*/\1/p' >>"$dest.libs"
  done
}

# -- the interpreter and its standard library ---------------------------------------------------------
copy_path "$py"
exe=$(readlink -f "$py")
stdlib=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
dynload=$("$py" -c 'import sys; print(next(p for p in sys.path if p.endswith("lib-dynload")))')
s="$dest$stdlib"
mkdir -p "$s"
for entry in "$stdlib"/* "$stdlib"/.[!.]*; do
  [ -e "$entry" ] || continue
  case ${entry##*/} in
    test | idlelib | tkinter | turtledemo | turtle.py | ensurepip | lib2to3 | pydoc_data | site-packages \
      | dist-packages | config-* | __pycache__) ;;
    *) cp -RL "$entry" "$s/" ;;   # -L: Debian's sitecustomize.py is a link into /etc/python3.x
  esac
done
find "$s" -name '__pycache__' -type d -prune -exec rm -rf {} +
find "$s" -type d \( -name test -o -name tests -o -name idle_test \) -prune -exec rm -rf {} +
case $dynload in
  "$stdlib"/*) ;;
  *) mkdir -p "$dest$(dirname "$dynload")" && cp -RL "$dynload" "$dest$(dirname "$dynload")/" ;;
esac

# -- the venv -----------------------------------------------------------------------------------------
mkdir -p "$dest$(dirname "$venv")"
cp -a "$venv" "$dest$(dirname "$venv")/"

# -- shared libraries ---------------------------------------------------------------------------------
shared_libs "$exe" $(find "$venv" "$dynload" -type f \( -name '*.so' -o -name '*.so.*' \) -not -path '*.libs/*')
for lib in $(sort -u "$dest.libs"); do
  case $lib in "$venv"/*) continue ;; esac   # the wheels' own bundled libraries are in the venv already
  copy_path "$lib"
done
rm -f "$dest.libs"
mkdir -p "$dest/etc"
cp -a /etc/ld.so.conf "$dest/etc/"
if [ -d /etc/ld.so.conf.d ]; then cp -a /etc/ld.so.conf.d "$dest/etc/"; fi
ldconfig -r "$dest" -X
rm -rf "$dest/var/cache/ldconfig"

# -- files the libraries and the app read ------------------------------------------------------------
for f in /etc/nsswitch.conf /etc/protocols /etc/services /etc/ssl/openssl.cnf; do
  if [ -e "$f" ]; then copy_path "$f"; fi
done
if [ ! -f /etc/ssl/certs/ca-certificates.crt ]; then
  echo "image-rootfs: no /etc/ssl/certs/ca-certificates.crt (install ca-certificates)" >&2
  exit 1
fi
mkdir -p "$dest/etc/ssl/certs"
cp -L /etc/ssl/certs/ca-certificates.crt "$dest/etc/ssl/certs/"
# OpenSSL's default paths (OPENSSLDIR, /usr/lib/ssl on Debian): cert.pem and certs/ lead to the bundle
openssldir=$("$py" -c 'import ssl, os; print(os.path.dirname(ssl.get_default_verify_paths().openssl_cafile))')
mkdir -p "$dest$openssldir"
[ -e "$dest$openssldir/cert.pem" ] || ln -s /etc/ssl/certs/ca-certificates.crt "$dest$openssldir/cert.pem"
[ -e "$dest$openssldir/certs" ] || ln -s /etc/ssl/certs "$dest$openssldir/certs"
if [ ! -d /usr/share/zoneinfo ]; then
  echo "image-rootfs: no /usr/share/zoneinfo (install tzdata)" >&2
  exit 1
fi
mkdir -p "$dest/usr/share"
cp -a /usr/share/zoneinfo "$dest/usr/share/"
rm -rf "$dest/usr/share/zoneinfo/right"   # leap-second variants: nothing here asks for them
printf 'root:x:0:0:root:/root:/sbin/nologin\nlifecycle:x:10001:10001:crm-lifecycle:/data:/sbin/nologin\n' \
  >"$dest/etc/passwd"
printf 'root:x:0:\nlifecycle:x:10001:\n' >"$dest/etc/group"
mkdir -p "$dest/tmp"
chmod 1777 "$dest/tmp"

# -- check: the app's imports, time zones and TLS, inside the new tree ------------------------------
# (IMAGE_ROOTFS_IMPORTS: the modules to import, the app's by default; tests/test_container.py gives others)
imports=${IMAGE_ROOTFS_IMPORTS:-polars, scipy.special, scipy.optimize, numpy, psycopg, sqlalchemy, cryptography.fernet, \
pydantic, aiohttp, uvicorn, connector.cli}
chroot "$dest" "$py" -I -B -c "
import ssl, sqlite3, zoneinfo, ctypes, lzma, bz2, zlib, uuid, decimal, json, hashlib
import $imports
zoneinfo.ZoneInfo('Europe/Moscow')
assert ssl.create_default_context().cert_store_stats()['x509_ca'] > 0, 'no CA certificates'
"
echo "image-rootfs: $(du -sh "$dest" | cut -f1) in $dest"
