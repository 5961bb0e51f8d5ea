"""``paster create`` templates, installed as ``repoze_who_memcached.paster_templates``.

This folder is a package only so that ``importlib.resources`` finds it the same way in an
editable checkout and in a wheel (setup.py maps it with ``package_dir``). Template files
that become Python end in ``.py_tmpl``: a ``.py`` file here would be byte-compiled by pip
into a ``__pycache__`` that ``paster create`` would then copy into new projects.
"""
