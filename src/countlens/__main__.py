from countlens.cli import main

main()
