"""Compiling the project's Spark plugin (``fink.runtime.plugin``): once per source, into the JVM
cache, and a clear error without a JDK, leaving nothing half made."""

from __future__ import annotations

import shutil
import zipfile

import pytest

from fink.errors import JvmArtifactsError
from fink.runtime import plugin

needs_javac = pytest.mark.skipif(shutil.which("javac") is None, reason="no javac (a JDK) on this machine")


@needs_javac
def test_the_plugin_is_compiled_once_from_the_package_s_sources(tmp_path, monkeypatch):
    monkeypatch.setenv("FINK_JVM_CACHE", str(tmp_path))
    assert plugin.jar() is None
    built = plugin.build()
    assert built == plugin.jar() == tmp_path / "plugin" / "fink-spark-plugin.jar"
    names = zipfile.ZipFile(built).namelist()
    assert "fink/spark/TaskConfPlugin.class" in names and "META-INF/MANIFEST.MF" in names
    assert plugin.build() is None  # up to date: not compiled again
    (tmp_path / "plugin" / plugin.STAMP).write_text("another source\n")
    assert plugin.jar() is None and plugin.build() == built  # a changed source is compiled again


def test_without_a_jdk_the_error_says_so_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("FINK_JVM_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(JvmArtifactsError, match="javac not found"):
        plugin.build()
    assert plugin.jar() is None and list(tmp_path.iterdir()) == []
