"""training: county core-talent pools, training sessions (enrolment, attendance, completion),
qualification exams and yearly outstanding selections."""
