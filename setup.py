"""Packaging for mcp-twisted.

The twistd plugin lives in ``twisted/plugins/`` (a namespace directory with no
``__init__.py``), so it is listed explicitly: ``find_packages()`` would skip it.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["mcp_twisted", "mcp_twisted.*"]) + ["twisted.plugins"],
    package_data={"twisted.plugins": ["mcpws.py"]},
)
