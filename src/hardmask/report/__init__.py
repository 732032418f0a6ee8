"""The report: tables (:mod:`.tables`), seaborn figures (:mod:`.figures`), Markdown/HTML (:mod:`.render`),
and the stage's inputs (:mod:`.inputs`)."""
