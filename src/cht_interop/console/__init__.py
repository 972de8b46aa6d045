"""Server-rendered admin pages (later issue)."""
