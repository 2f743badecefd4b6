"""Package layout (the metadata is in pyproject.toml).

The repository keeps the design's top-level folders, but ``tools/`` is installed as
``backbones_tools`` (a generic top-level ``tools`` would shadow a user's own package) and the
shipped ``configs/`` travel inside it as package data (``backbones_tools/configs``). pyproject's
``packages.find`` cannot rename a folder, hence this file.
"""

from setuptools import find_namespace_packages, find_packages, setup

TOOLS, CONFIGS = "backbones_tools", "backbones_tools.configs"

setup(
    packages=[*find_packages(include=["backbones", "backbones.*", "heads", "heads.*"]),
              TOOLS, *(f"{TOOLS}.{p}" for p in find_packages("tools")),
              CONFIGS, *(f"{CONFIGS}.{p}" for p in find_namespace_packages("configs"))],
    package_dir={TOOLS: "tools", CONFIGS: "configs"},
    package_data={TOOLS: ["analysis/*.png"], CONFIGS: ["*.yaml", "**/*.yaml"]},
)
