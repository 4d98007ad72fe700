"""Developer tools, apart from the method: the `qalign` command line (cli), the machine check (doctor), the speed
benchmark (speed) and the dataset downloader (download). Nothing in the method imports them.
"""
