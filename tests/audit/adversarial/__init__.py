"""Named adversarial fixtures for the verifier: an honest proof kit (:mod:`.kit`) and the
dishonest or damaged variants of it (:mod:`.tampers`), each mapped to the check that must
reject it and the message it must give."""
