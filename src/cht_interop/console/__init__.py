"""The administrators' console at /console: server-rendered pages (Jinja2, no script) over the
domains' own reads and actions; see docs/console.md."""
