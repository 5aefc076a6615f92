"""Knowledge scoring: spaCy NER (ner.py) and the normalised entity matching behind
retention and hallucination (normalize.py). The stage is curate/stages/knowledge.py."""
