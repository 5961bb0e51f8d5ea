"""Packaging for repoze_who_memcached (metadata lives here; tool settings in pyproject.toml)."""

from pathlib import Path

from setuptools import find_namespace_packages, find_packages, setup

HERE = Path(__file__).parent


def template_files() -> list[str]:
    """Every file under ``paster_templates/`` (never a ``__pycache__``), for ``package_data``.

    ``paster_templates/`` is installed as the package ``repoze_who_memcached.paster_templates``
    (see ``package_dir``), so ``importlib.resources`` finds it in editable and wheel installs.
    """
    root = HERE / "paster_templates"
    return sorted(
        str(path.relative_to(root))
        for path in root.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    )


setup(
    name="repoze_who_memcached",
    version="1.0.0.dev0",
    description="A repoze.who plugin that caches another authenticator's and metadata "
    "provider's results in memcached, sealed and keyed by HMAC; with an LDAP backend, "
    "a PasteDeploy filter and a PasteScript template.",
    long_description=(HERE / "README.rst").read_text(encoding="utf-8"),
    long_description_content_type="text/x-rst",
    license="MPL-2.0",
    python_requires=">=3.10",
    # Data folders are listed as packages too: setuptools warns that it may stop shipping
    # folders that look importable but are not listed.
    packages=[
        *find_packages(include=["repoze_who_memcached", "repoze_who_memcached.*"]),
        "repoze_who_memcached.data",
        "repoze_who_memcached.paster_templates",
        *(
            "repoze_who_memcached.paster_templates." + name
            for name in find_namespace_packages(where="paster_templates", exclude=["*__pycache__*"])
            if all(part.isidentifier() for part in name.split("."))
        ),
    ],
    package_dir={"repoze_who_memcached.paster_templates": "paster_templates"},
    package_data={
        "repoze_who_memcached": ["data/*"],
        "repoze_who_memcached.paster_templates": template_files(),
    },
    include_package_data=True,
    install_requires=[
        "repoze.who>=3.0",
        "zope.interface>=5",
        "WebOb>=1.8",
        "cryptography>=41",
        "python-memcached>=1.60",
        "ldap3>=2.9",
        "pyasn1>=0.4",  # imported by repoze_who_memcached.ldap (it comes with ldap3)
        "PasteDeploy>=3.0",
    ],
    extras_require={
        "pymemcache": ["pymemcache>=4.0"],
        "prometheus": ["prometheus_client>=0.17"],
        "paster": ["PasteScript>=3.6", "waitress>=2.1", "setuptools>=76,<81"],
        # Frameworks: optional, the core install pulls none. Pyramid 2.1 imports
        # pkg_resources, which setuptools 81 and later no longer ship.
        "pyramid": ["pyramid>=2.0", "setuptools>=76,<81"],
        "turbogears": ["TurboGears2>=2.4"],
        # ldap_library = python-ldap (libldap, C): built from source, needs Debian's
        # libldap2-dev and libsasl2-dev (the Makefile installs them before pip runs).
        "python-ldap": ["python-ldap>=3.4"],
        "test": [
            "pytest>=7",
            "WebTest>=3.0",
            "hypothesis>=6",
            "pymemcache>=4.0",
            "prometheus_client>=0.17",
            "PasteScript>=3.6",
            "waitress>=2.1",
            "ruff>=0.5",
            "build>=1.0",
            "pyramid>=2.0",
            "TurboGears2>=2.4",
            "setuptools>=76,<81",
            "python-ldap>=3.4",  # the LDAP suites run against both ldap_library choices
        ],
        "bench": ["dogpile.cache>=1.3", "matplotlib>=3.7", "pymemcache>=4.0",
                  "python-ldap>=3.4"],
        "docs": ["sphinx>=7"],
    },
    entry_points={
        "paste.filter_factory": [
            "main = repoze_who_memcached.pipeline:make_filter",
        ],
        "paste.app_factory": [
            "demo = repoze_who_memcached.demo:make_app",
        ],
        "repoze_who_memcached.plugins": [
            "cache = repoze_who_memcached:make_plugin",
            "ldap_authenticator = repoze_who_memcached.ldap:make_authenticator",
            "ldap_metadata = repoze_who_memcached.ldap:make_metadata_provider",
        ],
        "paste.paster_create_template": [
            "repoze_who_memcached_ldap = repoze_who_memcached.scaffold:LdapDeploymentTemplate",
            "repoze_who_memcached_pyramid = "
            "repoze_who_memcached.scaffold:PyramidDeploymentTemplate",
        ],
        "console_scripts": [
            "repoze-who-memcached = repoze_who_memcached.cli:main",
        ],
    },
    classifiers=[
        # Exactly the versions `make test-all` tests (noxfile.py, the Makefile).
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Framework :: Pyramid",
        "Framework :: TurboGears",
        "Framework :: Paste",
        "License :: OSI Approved :: Mozilla Public License 2.0 (MPL 2.0)",
        "Topic :: Internet :: WWW/HTTP :: WSGI :: Middleware",
        "Topic :: System :: Systems Administration :: Authentication/Directory :: LDAP",
    ],
)
