"""The report: the result in words (:mod:`.result`, with the bootstrap of :mod:`.stats`), tables
(:mod:`.tables`), seaborn figures (:mod:`.figures`), Markdown/HTML (:mod:`.render`), and the stage's inputs
(:mod:`.inputs`)."""
