#!/bin/sh
# Fieldpatch .deb post-install: apply the udev rule to devices already plugged in.
set -e
if command -v udevadm >/dev/null 2>&1; then
  udevadm control --reload-rules >/dev/null 2>&1 || true
  udevadm trigger --subsystem-match=usb --subsystem-match=tty >/dev/null 2>&1 || true
fi
