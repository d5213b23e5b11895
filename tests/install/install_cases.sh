#!/bin/bash
# Installation tests: staged `cmake --install`, the pkg-config file and the
# CMake package config used by a consumer, the .deb's contents and metadata,
# dpkg installing and removing it inside a scratch root, and lint of the
# manual pages. Usage: install_cases.sh CASE (see the case list at the end).
# Environment from CTest: MAILPOOL_BIN_DIR, MAILPOOL_SRC_DIR, MP_LIBDIR,
# MP_UNITDIR, MP_SYSUSERSDIR, MP_TMPFILESDIR, MP_VERSION, MP_SANITIZE.
set -euo pipefail

BIN=${MAILPOOL_BIN_DIR:?}
SRC=${MAILPOOL_SRC_DIR:?}
HERE=$SRC/tests/install
WORK=$BIN/tests/install/work
STAGE=$WORK/stage
DEBDIR=$WORK/deb
SKIP=77

fail() {
    echo "FAIL: $*" >&2
    exit 1
}

# Relative systemd dirs (no systemd.pc) are under the prefix.
abs_usr() {
    case $1 in
    /*) echo "$1" ;;
    *) echo "/usr/$1" ;;
    esac
}

# The expected file list, sorted, for prefix /usr.
expected_files() {
    {
        grep -v '^#' "$HERE/expected-files.txt" |
            sed -e "s|@LIBDIR@|/usr/$MP_LIBDIR|" -e "s|@UNITDIR@|$(abs_usr "$MP_UNITDIR")|" \
                -e "s|@SYSUSERSDIR@|$(abs_usr "$MP_SYSUSERSDIR")|" \
                -e "s|@TMPFILESDIR@|$(abs_usr "$MP_TMPFILESDIR")|" -e "s|@VERSION@|$MP_VERSION|"
        for u in "$SRC"/systemd/*.service "$SRC"/systemd/*.socket; do
            [ -e "$u" ] && echo "$(abs_usr "$MP_UNITDIR")/$(basename "$u")"
        done
    } | LC_ALL=C sort
}

# Build type suffix of the exported targets file varies: normalise it.
normalise() {
    sed -e 's|mailpoolTargets-[a-z]*\.cmake$|mailpoolTargets-CONFIG.cmake|' | LC_ALL=C sort
}

cc_flags() {
    if [ "${MP_SANITIZE:-OFF}" = ON ]; then
        echo "-fsanitize=address,undefined"
    fi
}

check_hello() {
    local out
    out=$("$@") || fail "hello exited $?"
    [ "$out" = "temporary failure, try again later" ] || fail "hello printed '$out'"
}

case_stage() {
    rm -rf "$STAGE"
    mkdir -p "$WORK"
    DESTDIR=$STAGE cmake --install "$BIN" --prefix /usr >"$WORK/stage.log" ||
        fail "cmake --install: $(cat "$WORK/stage.log")"
}

case_tree() {
    local got want
    got=$(cd "$STAGE" && find . \( -type f -o -type l \) | sed 's|^\.||' | normalise)
    want=$(expected_files)
    if [ "$got" != "$want" ]; then
        diff <(echo "$want") <(echo "$got") >&2 || true
        fail "installed tree differs from expected-files.txt (< expected, > installed)"
    fi
    local lib=$STAGE/usr/$MP_LIBDIR
    [ "$(readlink "$lib/libmailpool.so")" = libmailpool.so.0 ] || fail "libmailpool.so link"
    [ "$(readlink "$lib/libmailpool.so.0")" = "libmailpool.so.$MP_VERSION" ] ||
        fail "libmailpool.so.0 link"
    grep -q 'SONAME.*\[libmailpool\.so\.0\]' <<<"$(readelf -d "$lib/libmailpool.so.$MP_VERSION")" ||
        fail "soname is not libmailpool.so.0"
    # Only the public API leaves the shared library.
    local bad
    bad=$(nm -D --defined-only "$lib/libmailpool.so.0" | awk '$2 ~ /[TDB]/ {print $3}' |
        sed 's/@.*//' | grep -v '^mailpool_' | grep -v '^MAILPOOL_' || true)
    [ -z "$bad" ] || fail "exported non-API symbols: $bad"
    for b in usr/sbin/mailpoold usr/bin/mailpoolctl usr/bin/mailpool-sendmail; do
        [ -x "$STAGE/$b" ] || fail "$b not executable"
    done
    grep -q "$MP_VERSION" <<<"$("$STAGE/usr/sbin/mailpoold" -V)" || fail "mailpoold -V"
    grep -q '^u mailpool ' "$STAGE$(abs_usr "$MP_SYSUSERSDIR")/mailpool.conf" || fail "sysusers entry"
    grep -q '^d /var/spool/mailpool 0700 mailpool mailpool' \
        "$STAGE$(abs_usr "$MP_TMPFILESDIR")/mailpool.conf" || fail "tmpfiles entry"
    cmp -s "$SRC/etc/mailpool.conf" "$STAGE/etc/mailpool/mailpool.conf" || fail "example config"
}

case_pkgconfig() {
    local pcdir=$STAGE/usr/$MP_LIBDIR/pkgconfig flags out=$WORK/pkgconfig
    export PKG_CONFIG_PATH=$pcdir PKG_CONFIG_LIBDIR=$pcdir
    [ "$(pkg-config --modversion mailpool)" = "$MP_VERSION" ] || fail "pkg-config --modversion"
    flags=$(pkg-config --cflags --libs mailpool) || fail "pkg-config --cflags --libs"
    # The .pc is relocatable (${pcfiledir}): its paths must resolve into the stage.
    local f inc="" libd=""
    for f in $flags; do
        case $f in
        -I*) inc=$(readlink -f "${f#-I}") ;;
        -L*) libd=$(readlink -f "${f#-L}") ;;
        esac
    done
    [ "$inc" = "$(readlink -f "$STAGE/usr/include")" ] || fail "pkg-config -I is not the staged include dir: $flags"
    [ "$libd" = "$(readlink -f "$STAGE/usr/$MP_LIBDIR")" ] || fail "pkg-config -L is not the staged lib dir: $flags"
    mkdir -p "$out"
    # shellcheck disable=SC2046,SC2086
    cc -std=c11 -Wall -Werror $(cc_flags) "$HERE/hello.c" $flags -o "$out/hello" ||
        fail "compiling against the staged library"
    grep -q 'NEEDED.*\[libmailpool\.so\.0\]' <<<"$(readelf -d "$out/hello")" ||
        fail "hello not linked to libmailpool.so.0"
    check_hello env LD_LIBRARY_PATH="$STAGE/usr/$MP_LIBDIR" "$out/hello"
}

case_find_package() {
    local out=$WORK/find_package
    rm -rf "$out"
    cmake -S "$HERE/findpkg" -B "$out" -DCMAKE_PREFIX_PATH="$STAGE/usr" \
        -DMAILPOOL_WANT_VERSION="${MP_VERSION%.*}" \
        -DHELLO_SOURCE="$HERE/hello.c" -DCMAKE_C_FLAGS="$(cc_flags)" \
        -DCMAKE_EXE_LINKER_FLAGS="$(cc_flags)" >"$out.log" 2>&1 || fail "configure: $(cat "$out.log")"
    grep -q "mailpool_DIR:PATH=$STAGE/usr/$MP_LIBDIR/cmake/mailpool" "$out/CMakeCache.txt" ||
        fail "find_package did not use the staged package"
    cmake --build "$out" >>"$out.log" 2>&1 || fail "build: $(cat "$out.log")"
    check_hello env LD_LIBRARY_PATH="$STAGE/usr/$MP_LIBDIR" "$out/hello"
}

case_deb() {
    rm -rf "$DEBDIR"
    mkdir -p "$DEBDIR"
    (cd "$BIN" && cpack -G DEB -B "$DEBDIR") >"$DEBDIR/cpack.log" 2>&1 ||
        fail "cpack: $(cat "$DEBDIR/cpack.log")"
}

deb_file() {
    local f
    f=$(ls "$DEBDIR"/mailpool_*.deb 2>/dev/null | head -1)
    [ -n "$f" ] || fail "no .deb in $DEBDIR"
    echo "$f"
}

# Debian 12 package of each shared library mailpool links.
lib_package() {
    case $1 in
    libc.so.6) echo libc6 ;;
    libevent-2.1.so.7) echo libevent-2.1-7 ;;
    libevent_pthreads-2.1.so.7) echo libevent-pthreads-2.1-7 ;;
    libwolfssl.so.35) echo libwolfssl35 ;;
    libconfig.so.9) echo libconfig9 ;;
    libsystemd.so.0) echo libsystemd0 ;;
    esac
}

case_deb_contents() {
    local deb got want depends needed lib pkg ctl=$WORK/deb-control
    deb=$(deb_file)
    [ "$(dpkg-deb -f "$deb" Package)" = mailpool ] || fail "Package field"
    [ "$(dpkg-deb -f "$deb" Version)" = "$MP_VERSION" ] || fail "Version field"
    # Fields read whole first: "cmd | grep -q" under pipefail fails when grep
    # exits early and cmd gets SIGPIPE.
    local field
    field=$(dpkg-deb -f "$deb" Maintainer)
    grep -q '<.*@.*>' <<<"$field" || fail "Maintainer field"
    field=$(dpkg-deb -f "$deb" Description)
    grep -q . <<<"$field" || fail "Description field"
    depends=$(dpkg-deb -f "$deb" Depends)
    needed=$(for b in usr/sbin/mailpoold usr/bin/mailpoolctl usr/bin/mailpool-sendmail \
        "usr/$MP_LIBDIR/libmailpool.so.0"; do
        readelf -d "$STAGE/$b" | sed -n 's/.*NEEDED.*\[\(.*\)\]/\1/p'
    done | sort -u)
    [ -n "$needed" ] || fail "no NEEDED libraries found (stage missing?)"
    for lib in $needed; do
        pkg=$(lib_package "$lib")
        [ -z "$pkg" ] && continue
        echo ", $depends," | grep -q ", $pkg[ ,]" || fail "Depends lacks $pkg (for $lib): $depends"
    done
    echo ", $depends," | grep -q ", libwolfssl35[ ,]" || fail "Depends lacks libwolfssl35: $depends"

    got=$(dpkg-deb -c "$deb" | awk '$1 !~ /^d/ {print $6}' | sed 's|^\.||' | normalise)
    want=$(expected_files)
    if [ "$got" != "$want" ]; then
        diff <(echo "$want") <(echo "$got") >&2 || true
        fail "dpkg-deb -c differs from expected-files.txt (< expected, > in .deb)"
    fi
    local listing
    listing=$(dpkg-deb -c "$deb")
    grep -q '^-rwxr-xr-x root/root .* \./usr/sbin/mailpoold$' <<<"$listing" ||
        fail "mailpoold mode/owner in the .deb"

    rm -rf "$ctl"
    dpkg-deb -e "$deb" "$ctl"
    grep -qx /etc/mailpool/mailpool.conf "$ctl/conffiles" || fail "mailpool.conf is not a conffile"
    for s in postinst prerm postrm; do
        [ -x "$ctl/$s" ] || fail "$s missing or not executable"
        sh -n "$ctl/$s" || fail "$s: shell syntax"
    done
    grep -q 'update-alternatives --install /usr/sbin/sendmail sendmail /usr/bin/mailpool-sendmail' \
        <(tr -d '\\\n' <"$ctl/postinst" | tr -s ' ') || fail "postinst: sendmail alternative"
    grep -q 'systemctl.*\(start\|enable\)' "$ctl/postinst" && fail "postinst must not start the service"
    true
}

# A scratch root with a shell, coreutils and logging stand-ins for the
# system tools the maintainer scripts call; dpkg --root chroots into it, so
# nothing outside the scratch root changes. Needs root (chroot).
make_root() {
    local root=$1 f
    rm -rf "$root"
    mkdir -p "$root/usr/bin" "$root/usr/sbin" "$root/usr/lib" "$root/var/lib/dpkg/info" \
        "$root/var/lib/dpkg/updates" "$root/var/lib/dpkg/triggers" "$root/etc" "$root/tmp" "$root/dev"
    # A plain file serves the scripts' redirections; no device node needed.
    : >"$root/dev/null"
    ln -s usr/bin "$root/bin"
    ln -s usr/sbin "$root/sbin"
    ln -s usr/lib "$root/lib"
    [ -d /lib64 ] && ln -s usr/lib64 "$root/lib64" && mkdir -p "$root/usr/lib64"
    : >"$root/var/lib/dpkg/status"
    : >"$root/var/lib/dpkg/available"
    for f in /bin/sh /bin/dash /usr/bin/getent /bin/rmdir /bin/mkdir /bin/chown /bin/chmod; do
        [ -e "$f" ] || continue
        cp -L "$f" "$root/usr/bin/"
        ldd "$f" 2>/dev/null | grep -o '/[^ ]*' | while read -r l; do
            mkdir -p "$root$(dirname "$(readlink -f "$l")")" "$root$(dirname "$l")"
            cp -L "$l" "$root$l" 2>/dev/null || true
        done
    done
    for f in systemd-sysusers systemd-tmpfiles update-alternatives systemctl ldconfig; do
        printf '#!/bin/sh\necho "%s $*" >>/tool.log\n' "$f" >"$root/usr/bin/$f"
        chmod 755 "$root/usr/bin/$f"
    done
}

case_deb_install() {
    local deb root=$WORK/root st
    deb=$(deb_file)
    [ "$(id -u)" -eq 0 ] || {
        echo "SKIP: dpkg --root needs root for chroot"
        exit $SKIP
    }
    make_root "$root"
    chroot "$root" /bin/sh -c true 2>/dev/null || {
        echo "SKIP: cannot chroot into a scratch root"
        exit $SKIP
    }
    local dpkg=(dpkg --root="$root" --force-depends --force-not-root --log=/dev/null)
    "${dpkg[@]}" -i "$deb" >"$WORK/dpkg-i.log" 2>&1 || fail "dpkg -i: $(cat "$WORK/dpkg-i.log")"
    st=$("${dpkg[@]}" -s mailpool | sed -n 's/^Status: //p')
    [ "$st" = "install ok installed" ] || fail "status after install: $st"
    [ -x "$root/usr/sbin/mailpoold" ] || fail "mailpoold not installed"
    [ -f "$root/etc/mailpool/mailpool.conf" ] || fail "config not installed"
    grep -q "^systemd-sysusers .*/sysusers.d/mailpool.conf" "$root/tool.log" || fail "postinst: sysusers"
    grep -q "^systemd-tmpfiles --create .*/tmpfiles.d/mailpool.conf" "$root/tool.log" ||
        fail "postinst: tmpfiles"
    grep -q "^update-alternatives --install /usr/sbin/sendmail sendmail /usr/bin/mailpool-sendmail 10" \
        "$root/tool.log" || fail "postinst: alternatives"
    if grep -q "^systemctl .*\(start\|enable\)" "$root/tool.log"; then fail "postinst started the service"; fi

    # An edited conffile survives removal; purge deletes it and /etc/mailpool.
    echo "# local edit" >>"$root/etc/mailpool/mailpool.conf"
    "${dpkg[@]}" -r mailpool >"$WORK/dpkg-r.log" 2>&1 || fail "dpkg -r: $(cat "$WORK/dpkg-r.log")"
    st=$("${dpkg[@]}" -s mailpool | sed -n 's/^Status: //p')
    [ "$st" = "deinstall ok config-files" ] || fail "status after remove: $st"
    [ ! -e "$root/usr/sbin/mailpoold" ] || fail "mailpoold left after remove"
    [ ! -e "$root/usr/$MP_LIBDIR/libmailpool.so.0" ] || fail "library left after remove"
    grep -q "local edit" "$root/etc/mailpool/mailpool.conf" || fail "remove lost the edited config"
    grep -q "^update-alternatives --remove sendmail /usr/bin/mailpool-sendmail" "$root/tool.log" ||
        fail "prerm: alternatives"
    mkdir -p "$root/var/spool/mailpool/queue"
    : >"$root/var/spool/mailpool/queue/kept"
    "${dpkg[@]}" -P mailpool >"$WORK/dpkg-P.log" 2>&1 || fail "dpkg -P: $(cat "$WORK/dpkg-P.log")"
    "${dpkg[@]}" -s mailpool >/dev/null 2>&1 && fail "package still known after purge"
    [ ! -e "$root/etc/mailpool" ] || fail "/etc/mailpool left after purge"
    [ -e "$root/var/spool/mailpool/queue/kept" ] || fail "purge deleted queued mail"
    local left
    left=$(cd "$root" && find usr/share/man usr/include etc/mailpool -type f 2>/dev/null || true)
    [ -z "$left" ] || fail "files left after purge: $left"
}

case_man_lint() {
    local page out rc=0
    for page in mailpoold.8 mailpool.conf.5 mailpoolctl.1 mailpool-sendmail.8 libmailpool.3; do
        [ -f "$SRC/man/$page" ] || fail "man/$page missing"
    done
    for page in "$SRC"/man/*.[1-8]; do
        out=$(mandoc -T lint -W warning "$page" 2>&1) || true
        if [ -n "$out" ]; then
            echo "$out" >&2
            rc=1
        fi
        out=$(LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -E UTF-8 -l "$page" 2>&1 >/dev/null) || true
        if [ -n "$out" ]; then
            echo "man --warnings $(basename "$page"): $out" >&2
            rc=1
        fi
    done
    [ $rc -eq 0 ] || fail "manual pages have warnings"
}

case ${1:-} in
stage | tree | pkgconfig | find_package | deb | deb_contents | deb_install | man_lint)
    command -v mandoc >/dev/null || [ "$1" != man_lint ] || {
        echo "SKIP: mandoc not installed"
        exit $SKIP
    }
    "case_$1"
    echo "ok $1"
    ;;
*)
    echo "usage: $0 stage|tree|pkgconfig|find_package|deb|deb_contents|deb_install|man_lint" >&2
    exit 2
    ;;
esac
