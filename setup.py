"""Packaging from settings.ini (nbdev 2.4 convention); job notebooks ship inside the wheel as `codecomplete.job_notebooks`."""
from configparser import ConfigParser
import setuptools, shlex

config = ConfigParser(delimiters=['='])
config.read('settings.ini', encoding='utf-8')
cfg = config['DEFAULT']
licenses = {'apache2': ('Apache Software License 2.0', 'OSI Approved :: Apache Software License')}
statuses = ['Planning', 'Pre-Alpha', 'Alpha', 'Beta', 'Production/Stable', 'Mature', 'Inactive']
requirements = shlex.split(cfg.get('requirements', ''))
jobs_requirements = shlex.split(cfg.get('jobs_requirements', ''))
dev_requirements = shlex.split(cfg.get('dev_requirements', ''))
ray_requirements = shlex.split(cfg.get('ray_requirements', ''))
lic = licenses[cfg['license']]
setuptools.setup(
    name=cfg['lib_name'], version=cfg['version'], license=lic[0],
    classifiers=['Development Status :: ' + statuses[int(cfg['status'])], 'Intended Audience :: Developers',
                 'License :: ' + lic[1], 'Natural Language :: English', 'Programming Language :: Python :: 3'],
    url=cfg['git_url'], packages=setuptools.find_packages(include=['codecomplete', 'codecomplete.*']) + ['codecomplete.job_notebooks'],
    package_dir={'codecomplete.job_notebooks': 'nbs/jobs'}, package_data={'codecomplete.job_notebooks': ['*.ipynb']},
    include_package_data=True, install_requires=requirements,
    extras_require={'jobs': jobs_requirements, 'ray': ray_requirements, 'dev': jobs_requirements + ray_requirements + dev_requirements},
    dependency_links=cfg.get('dep_links', '').split(), python_requires='>=' + cfg['min_python'],
    long_description=open('README.md', encoding='utf-8').read(), long_description_content_type='text/markdown',
    zip_safe=False, entry_points={'console_scripts': cfg.get('console_scripts', '').split(),
                                  'nbdev': [f'{cfg["lib_path"]}={cfg["lib_path"]}._modidx:d']},
    author=cfg['author'], author_email=cfg['author_email'], description=cfg['description'], keywords=cfg['keywords'])
