"""Caption generation (issue 15): the inference backends, prompt templates, output
checks, the knowledge guard and sub-caption splitting that the generation stages
(``curate.stages.generate``) are built from. Generated captions are ordinary caption
variants with their provenance in ``captions.generation``."""
