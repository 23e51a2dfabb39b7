"""Photos and reconstruction: detection (`detect`), crops (`crop`), test-time fitting (`fit`, `refine`), texture (`texture`) and the pipeline (`pipeline`)."""
