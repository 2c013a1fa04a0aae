# Shell functions shared by every maintainer script, .deb and .rpm alike. `qdeploy package`
# prepends the values it rendered from the config:
#   PKG_NAME PKG_VERSION PREFIX PYTHON QD_USER QD_GROUP QD_HOME SYSUSERS_CONF SYSUSERS
#   TMPFILES_CONF DIRS LOG_DIR CONFIG_DIR SECRET_FILES CONFFILES UNITS INSTANCES INIT_SCRIPTS START_ON_INSTALL
# POSIX sh only: these run under dash (Debian) and bash (RHEL). The lists (UNITS, INIT_SCRIPTS,
# SECRET_FILES, CONFFILES) are space-separated words without glob characters: split on purpose.

log() {
    echo "$PKG_NAME: $*" >&2
}

# systemd is PID 1 right now (not in a chroot, an image build or a sysvinit host).
booted() {
    [ -d /run/systemd/system ]
}

# The host boots with systemd (possibly later: a chroot or image build counts).
systemd_host() {
    booted && return 0
    case "$(readlink -f /sbin/init 2>/dev/null)" in
        */systemd) return 0 ;;
    esac
    return 1
}

# The system user and group: systemd-sysusers with the rendered sysusers.d entry where it
# exists (also before the file is unpacked: the entry comes on stdin), else groupadd/useradd.
create_user() {
    if [ -n "$SYSUSERS" ] && command -v systemd-sysusers >/dev/null 2>&1; then
        if printf '%s\n' "$SYSUSERS" | systemd-sysusers --replace="$SYSUSERS_CONF" - >/dev/null; then
            return 0
        fi
        log "systemd-sysusers failed; falling back to groupadd/useradd"
    fi
    getent group "$QD_GROUP" >/dev/null || groupadd --system "$QD_GROUP"
    getent passwd "$QD_USER" >/dev/null || useradd --system --gid "$QD_GROUP" --home-dir "$QD_HOME" \
        --no-create-home --shell /usr/sbin/nologin --comment "qdeploy task queue" "$QD_USER"
}

# Pid, log, state and work directories with their owner and mode.
create_dirs() {
    if [ -n "$TMPFILES_CONF" ] && [ -f "$TMPFILES_CONF" ] && command -v systemd-tmpfiles >/dev/null 2>&1; then
        systemd-tmpfiles --create "$TMPFILES_CONF" && return 0
        log "systemd-tmpfiles failed; creating the directories with install -d"
    fi
    printf '%s\n' "$DIRS" | while read -r mode dir; do
        [ -n "$dir" ] && install -d -m "$mode" -o "$QD_USER" -g "$QD_GROUP" "$dir"
    done
    return 0
}

# Files that may hold the broker password are 0640 root:root in the archive; the services'
# group must read them. An admin's dpkg-statoverride wins.
fix_secret_groups() {
    for file in $SECRET_FILES; do
        [ -e "$file" ] || continue
        if command -v dpkg-statoverride >/dev/null 2>&1 && dpkg-statoverride --list "$file" >/dev/null; then
            continue
        fi
        chgrp "$QD_GROUP" "$file"
    done
}

# A fresh venv from the bundled wheelhouse, built where it will stay (its scripts' shebangs name
# this path), then swapped in atomically: the symlink $PREFIX/venv is what the services run.
# On any failure the previous venv stays in place and in use.
build_venv() {
    new="$PREFIX/venvs/$PKG_VERSION-$(date +%s)-$$"
    mkdir -p "$PREFIX/venvs"
    if ! "$PYTHON" -m venv "$new" >/dev/null; then
        rm -rf "$new"
        log "cannot create a venv with $PYTHON -m venv (is python3-venv installed?)"
        return 1
    fi
    # Offline: only the bundled wheels; an admin's pip.conf (index, hashes) does not apply.
    if ! PIP_CONFIG_FILE=/dev/null PIP_NO_INPUT=1 "$new/bin/python" -m pip install --quiet --no-index \
        --no-cache-dir --disable-pip-version-check --find-links "$PREFIX/wheels" "$PREFIX"/wheels/*.whl; then
        rm -rf "$new"
        log "cannot install the bundled wheels from $PREFIX/wheels into $new"
        return 1
    fi
    if ! "$new/bin/qdeploy" --version >/dev/null; then
        rm -rf "$new"
        log "$new/bin/qdeploy does not run"
        return 1
    fi
    ln -sfn "$new" "$PREFIX/venv.new"
    mv -Tf "$PREFIX/venv.new" "$PREFIX/venv"
}

# Every venv but the current one (after the services were restarted on the new one).
prune_venvs() {
    current=$(readlink -f "$PREFIX/venv" 2>/dev/null) || return 0
    for dir in "$PREFIX"/venvs/*; do
        if [ -d "$dir" ] && [ "$dir" != "$current" ]; then
            rm -rf "$dir"
        fi
    done
    return 0
}

remove_venvs() {
    rm -rf "$PREFIX/venvs" "$PREFIX/venv" "$PREFIX/venv.new"
}

# Enable at boot: systemd units, else the LSB init scripts (update-rc.d / chkconfig).
enable_services() {
    if systemd_host; then
        [ -z "$UNITS" ] || systemctl enable $UNITS
    else
        for script in $INIT_SCRIPTS; do
            if command -v update-rc.d >/dev/null 2>&1; then
                update-rc.d "$script" defaults >/dev/null
            elif command -v chkconfig >/dev/null 2>&1; then
                chkconfig --add "$script"
            fi
        done
    fi
}

start_services() {
    if booted; then
        [ -z "$UNITS" ] || systemctl start $UNITS
    elif ! systemd_host; then
        for script in $INIT_SCRIPTS; do
            "/etc/init.d/$script" start
        done
    fi
}

# `systemctl VERB` on every instance that is loaded: INSTANCES holds the glob qworker@*.service,
# which systemctl expands (not the shell: set -f).
instances() {
    [ -n "$INSTANCES" ] || return 0
    set -f
    systemctl "$1" $INSTANCES
    status=$?
    set +f
    return "$status"
}

# After an upgrade: restart what runs, so it runs the new venv and config. Nothing else starts.
restart_services() {
    if booted; then
        systemctl daemon-reload
        instances try-restart || log "systemctl try-restart failed: see systemctl status $INSTANCES"
    fi
    for script in $INIT_SCRIPTS; do
        if [ -x "/etc/init.d/$script" ] && "/etc/init.d/$script" status >/dev/null 2>&1; then
            "/etc/init.d/$script" restart || log "/etc/init.d/$script restart failed"
        fi
    done
}

# On removal: stop every instance however it was started, and disable the units.
stop_services() {
    if booted; then
        [ -z "$UNITS" ] || systemctl disable --now $UNITS >/dev/null 2>&1 || log "systemctl disable --now $UNITS failed"
        instances stop || log "systemctl stop $INSTANCES failed"
    elif systemd_host; then
        [ -z "$UNITS" ] || systemctl disable $UNITS >/dev/null 2>&1 || true
    fi
    for script in $INIT_SCRIPTS; do
        if [ -x "/etc/init.d/$script" ] && ! booted; then
            "/etc/init.d/$script" stop >/dev/null || log "/etc/init.d/$script stop failed"
        elif [ -x "/etc/init.d/$script" ]; then
            # started by hand next to systemd: its pid files say so
            "/etc/init.d/$script" stop >/dev/null 2>&1 || true
        fi
    done
}

daemon_reload() {
    if booted; then
        systemctl daemon-reload || true
    fi
}

# dpkg -P / rpm -e: leftovers that are no package file (dpkg removes the conffiles themselves).
purge_files() {
    for file in $CONFFILES; do
        rm -f "$file.dpkg-old" "$file.dpkg-dist" "$file.dpkg-new" "$file.dpkg-tmp" "$file.rpmsave" "$file.rpmnew"
    done
    rmdir "$CONFIG_DIR" 2>/dev/null || true
    # only our own logs: log_dir may be shared (never rm -rf a configurable path)
    rm -f "$LOG_DIR"/qworker-*.log* "$LOG_DIR"/qbeat.log*
    rmdir "$LOG_DIR" 2>/dev/null || true
    for script in $INIT_SCRIPTS; do
        if command -v update-rc.d >/dev/null 2>&1; then
            update-rc.d "$script" remove >/dev/null || true
        fi
    done
}
