"""Write the host's effective pip configuration into a root filesystem, for `make-base-image.sh`.

pip on a build machine is often set up through several files and `PIP_*` variables (a CA bundle for an
egress proxy, a timeout, constraints). A `docker build` on that machine sees none of them, so this folds
what `pip config list` reports into one `/etc/pip.conf` inside the image:

- files that settings point to (`cert`, `client-cert`, `constraint`) are copied to the same path;
- indexes and find-links that are local folders or `file://` URLs are dropped: they do not exist inside
  the image, and the build reaches the package index over the network like the host does;
- everything else is kept as it is. Environment variables win over files, as they do for pip.
"""

import argparse
import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

_LINE = re.compile(r"^(?P<section>:env:|[\w-]+)\.(?P<key>[\w-]+)='(?P<value>.*)'$")
_LOCATION_KEYS = {"index-url", "extra-index-url", "find-links"}
_FILE_KEYS = {"cert", "client-cert", "constraint"}


def read_host_config() -> dict[str, dict[str, str]]:
    """Return {section: {key: value}} as `pip config list` reports it, `:env:` folded into `global`."""
    listing = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], check=True, capture_output=True, text=True
    ).stdout
    from_files: dict[str, dict[str, str]] = {}
    from_env: dict[str, str] = {}
    for line in listing.splitlines():
        match = _LINE.match(line.strip())
        if match is None:
            continue
        section, key, value = match["section"], match["key"], match["value"]
        if section == ":env:":
            from_env[key] = value
        else:
            from_files.setdefault(section, {})[key] = value
    from_files.setdefault("global", {}).update(from_env)
    return from_files


def _is_local(location: str) -> bool:
    return location.startswith(("file:", "/", "."))


def adapt(config: dict[str, dict[str, str]], rootfs: Path) -> dict[str, dict[str, str]]:
    """Drop local package locations and copy referenced files into `rootfs`."""
    adapted: dict[str, dict[str, str]] = {}
    for section, settings in config.items():
        for key, value in settings.items():
            if key in _LOCATION_KEYS:
                value = " ".join(loc for loc in value.split() if not _is_local(loc))
                if not value:
                    continue
            elif key in _FILE_KEYS:
                source = Path(value)
                if not source.is_file():
                    continue
                target = rootfs / source.relative_to(source.anchor)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
            adapted.setdefault(section, {})[key] = value
    return adapted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rootfs", type=Path, help="root filesystem to write etc/pip.conf into")
    args = parser.parse_args()
    config = adapt(read_host_config(), args.rootfs)
    writer = configparser.ConfigParser(interpolation=None)
    writer.read_dict(config)
    target = args.rootfs / "etc" / "pip.conf"
    with target.open("w") as out:
        writer.write(out)
    print(target.read_text(), end="")


if __name__ == "__main__":
    main()
