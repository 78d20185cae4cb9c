"""The Triton layer: the two model classes (static_model, inflight_model) and what they share. Imported only
inside Triton's python-backend stub, whose interpreter starts with an ASCII locale: inductor reads UTF-8
templates, so the locale is switched here, before anything imports torch."""
import locale

locale.setlocale(locale.LC_ALL, "C.UTF-8")
