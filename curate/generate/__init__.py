"""Caption generation (issue 15): the pieces the `caption`, `fuse`, `rewrite`, `vec` and
`subcaptions` stages share. Prompts are data (templates.py and the bundled TOML files in
templates/), a model's bad answer becomes a status on its row rather than a crash
(checks.py), sub-captions of long captions need no model (subcaptions.py), and the HTTP
client that talks to an OpenAI-compatible server lives in backend.py."""
