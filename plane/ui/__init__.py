"""The dashboard's static files (HTML, CSS, JavaScript modules), served under
``/ui/`` by :mod:`plane.api.ui`.  No build step and nothing from a CDN: what is
in this directory is what the browser runs."""
