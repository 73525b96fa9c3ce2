from sandbox.ads.cli import main

raise SystemExit(main())
