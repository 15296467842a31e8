from trigger_watch.cli import main

main()
