"""What a person looks at: PNG figures (plots) and HTML pages (pages), drawn from arrays and from the JSON
reports the pipeline writes. Imports nothing above `audio`."""
