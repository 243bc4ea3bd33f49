"""Build hook: a wheel carries the project's notebooks, example conf files and sample night.

They live at the top of the clone (notebooks/, conf/, datasim/sample_night/), where people edit
them; a wheel copies them into ``fink/data/project/`` so that an installed broker finds them
through ``importlib.resources`` (:func:`fink.config.project_dir`) and ``fink init --project``
can copy them into a work folder. An editable install reads the clone's own folders.
Everything else is declared in setup.cfg.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
# as fink.config.PROJECT_FILES (setup.py cannot import the package it builds)
PROJECT_FILES = {"notebooks": "*.ipynb", "conf": "*.yaml", "datasim/sample_night": "*"}


class BuildWithProject(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for folder, pattern in PROJECT_FILES.items():
            dest = Path(self.build_lib) / "fink" / "data" / "project" / folder
            dest.mkdir(parents=True, exist_ok=True)
            for path in sorted((ROOT / folder).glob(pattern)):
                shutil.copyfile(path, dest / path.name)


setup(cmdclass={"build_py": BuildWithProject})
