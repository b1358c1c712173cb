# tests/gpu/env.sh: sourced by run.sh and hang.sh.  Where Open MPI / hwloc / cJSON / Check /
# libmicrohttpd are missing (the device machine), unpacks the carried .deb files of $DEBS into a
# scratch prefix and exports what finds them there; sets MPI_ARGS (CMake's MPI flags) and say().
DEBS=${SQ_DEBS:-$ROOT/.debs}
say() { printf '%s: %s\n' "$(basename "$0")" "$*"; }
MPI_ARGS=()
missing_tools() {
    ! command -v mpicc >/dev/null 2>&1 || ! command -v pkg-config >/dev/null 2>&1 ||
        ! pkg-config --exists libcjson hwloc check libmicrohttpd 2>/dev/null
}
if [ -n "${SQ_FORCE_DEBS:-}" ] || missing_tools; then
    if ! ls "$DEBS"/*.deb >/dev/null 2>&1; then
        say "Open MPI / hwloc / cJSON / Check are missing and $DEBS holds no .deb files" >&2
        exit 2
    fi
    P=${SQ_DEB_PREFIX:-/tmp/shardq-debs}
    rm -rf "$P" && mkdir -p "$P"
    for f in "$DEBS"/*.deb; do dpkg -x "$f" "$P"; done
    # Debian's alternatives links are not in the packages
    for t in mpicc mpirun mpiexec; do ln -sf "$t.openmpi" "$P/usr/bin/$t"; done
    [ -e "$P/usr/bin/pkg-config" ] || ln -sf pkgconf "$P/usr/bin/pkg-config"
    ML=$P/usr/lib/x86_64-linux-gnu
    export PATH=$P/usr/bin:$PATH
    export OPAL_PREFIX=$P/usr   # relocates Open MPI (wrappers, plugins, orted)
    export LD_LIBRARY_PATH=$ML:$ML/openmpi/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    export PKG_CONFIG_SYSROOT_DIR=$P PKG_CONFIG_LIBDIR=$ML/pkgconfig:$P/usr/share/pkgconfig
    # PMIx looks for its plugins where the machine's own PMIx keeps them (another version)
    export PMIX_MCA_mca_base_component_path=$ML/pmix2/lib/pmix PMIX_MCA_pcompress_base_silence_warning=1
    export CMAKE_PREFIX_PATH=$P/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}
    MPI_ARGS=(-DMPI_C_COMPILER="$P/usr/bin/mpicc" -DMPIEXEC_EXECUTABLE="$P/usr/bin/mpirun")
    # libmicrohttpd's .pc names gnutls in Requires.private; the link is dynamic and the headers
    # need none of gnutls', so a .pc that only answers the name is enough to configure
    if ! pkg-config --exists gnutls 2>/dev/null; then
        printf 'Name: gnutls\nDescription: stand-in (run.sh)\nVersion: 3.7.9\nLibs:\nCflags:\n' \
            > "$ML/pkgconfig/gnutls.pc"
    fi
    # libraries the carried ones need at run time (gnutls and its chain, for libmicrohttpd):
    # .debs/fallback/*.deb, each soname linked in only where the machine's own loader lacks it
    if ls "$DEBS"/fallback/*.deb >/dev/null 2>&1; then
        FB=$P/fallback
        mkdir -p "$FB"
        for f in "$DEBS"/fallback/*.deb; do dpkg -x "$f" "$FB"; done
        n_fb=0
        have=$(ldconfig -p | awk '{print $1}')
        while IFS= read -r lib; do
            so=$(basename "$lib")
            if ! grep -qxF "$so" <<< "$have"; then ln -sf "$lib" "$ML/$so"; n_fb=$((n_fb + 1)); fi
        done < <(find "$FB" -name 'lib*.so.*' \( -type f -o -type l \) | grep -E '\.so\.[0-9]+$')
        say "linked $n_fb fallback libraries the machine lacks"
    fi
    say "unpacked $(ls "$DEBS"/*.deb | wc -l) carried packages into $P"
fi

