// What the Simulate tab starts with for each bundled example: seed rows and
// a first call (taken from the scenarios in tests/scenarios). Other specs
// start with no rows and an input drafted from the tool's input schema.

export const PRESETS = {
  "shop": {
    "seed": {
      "Product": [
        {
          "id": "00000000-0000-4000-8000-000000000001",
          "sku": "TEA",
          "name": "Green tea",
          "price_cents": 450,
          "stock": 10
        }
      ]
    },
    "tool": "place_order",
    "input": {
      "product": "00000000-0000-4000-8000-000000000001",
      "quantity": 2
    },
    "sub": "alice",
    "roles": [
      "customer"
    ],
    "idempotencyKey": "po-1"
  },
  "bank": {
    "seed": {
      "Account": [
        {
          "id": "00000000-0000-4000-8000-000000000001",
          "holder": "alice",
          "name": "Checking",
          "currency": "EUR",
          "balance": 10000,
          "created_at": "2025-12-01T09:00:00Z"
        },
        {
          "id": "00000000-0000-4000-8000-000000000002",
          "holder": "alice",
          "name": "Savings",
          "currency": "EUR",
          "balance": 5000,
          "created_at": "2025-12-02T09:00:00Z"
        },
        {
          "id": "00000000-0000-4000-8000-000000000003",
          "holder": "bob",
          "name": "Checking",
          "currency": "EUR",
          "balance": 2000,
          "created_at": "2025-12-03T09:00:00Z"
        },
        {
          "id": "00000000-0000-4000-8000-000000000004",
          "holder": "alice",
          "name": "Dollars",
          "currency": "USD",
          "balance": 3000,
          "created_at": "2025-12-04T09:00:00Z"
        }
      ]
    },
    "tool": "transfer",
    "input": {
      "from_account": "00000000-0000-4000-8000-000000000001",
      "to_account": "00000000-0000-4000-8000-000000000002",
      "amount_cents": 3000,
      "reference": "to savings"
    },
    "sub": "alice",
    "roles": [
      "customer"
    ],
    "idempotencyKey": "tr-1"
  },
  "booking": {
    "seed": {
      "Room": [
        {
          "id": "00000000-0000-4000-8000-000000000001",
          "number": "101",
          "name": "Garden double",
          "capacity": 2,
          "nightly_rate_cents": 10000,
          "active": true
        },
        {
          "id": "00000000-0000-4000-8000-000000000002",
          "number": "102",
          "name": "Closed twin",
          "capacity": 4,
          "nightly_rate_cents": 9000,
          "active": false
        },
        {
          "id": "00000000-0000-4000-8000-000000000003",
          "number": "201",
          "name": "Family suite",
          "capacity": 4,
          "nightly_rate_cents": 15000,
          "active": true
        }
      ]
    },
    "tool": "hold_room",
    "input": {
      "room": "00000000-0000-4000-8000-000000000001",
      "check_in": "2026-02-01T15:00:00Z",
      "nights": 2,
      "guests": 2,
      "email": "alice@example.com"
    },
    "sub": "alice",
    "roles": [
      "guest"
    ],
    "idempotencyKey": "h-1"
  },
  "clinic": {
    "seed": {
      "Therapist": [
        {
          "id": "00000000-0000-4000-8000-000000000001",
          "name": "Dr Ames",
          "specialty": "physio",
          "rate_cents": 9000
        },
        {
          "id": "00000000-0000-4000-8000-000000000002",
          "name": "Dr Bell",
          "specialty": "massage",
          "rate_cents": 6000
        },
        {
          "id": "00000000-0000-4000-8000-000000000003",
          "name": "Dr Gone",
          "specialty": "physio",
          "rate_cents": 5000,
          "deleted_at": "2025-12-01T00:00:00Z"
        }
      ],
      "Patient": [
        {
          "id": "00000000-0000-4000-8000-000000000011",
          "account": "ann",
          "name": "Ann",
          "email": "ann@example.com"
        },
        {
          "id": "00000000-0000-4000-8000-000000000012",
          "account": "bob",
          "name": "Bob",
          "email": "bob@example.com"
        },
        {
          "id": "00000000-0000-4000-8000-000000000013",
          "account": "ann",
          "name": "Ann Jr",
          "email": "annjr@example.com"
        }
      ],
      "Appointment": [
        {
          "id": "00000000-0000-4000-8000-000000000021",
          "patient": "00000000-0000-4000-8000-000000000011",
          "therapist": "00000000-0000-4000-8000-000000000001",
          "start_at": "2026-02-01T10:00:00Z",
          "minutes": 60,
          "status": "completed",
          "note": "knee follow-up"
        },
        {
          "id": "00000000-0000-4000-8000-000000000022",
          "patient": "00000000-0000-4000-8000-000000000012",
          "therapist": "00000000-0000-4000-8000-000000000001",
          "start_at": "2026-02-02T10:00:00Z",
          "minutes": 45,
          "status": "confirmed",
          "note": "back pain"
        },
        {
          "id": "00000000-0000-4000-8000-000000000023",
          "patient": "00000000-0000-4000-8000-000000000013",
          "therapist": "00000000-0000-4000-8000-000000000003",
          "start_at": "2026-01-20T09:00:00Z",
          "minutes": 30,
          "status": "completed",
          "note": "Knee"
        },
        {
          "id": "00000000-0000-4000-8000-000000000024",
          "patient": "00000000-0000-4000-8000-000000000011",
          "therapist": "00000000-0000-4000-8000-000000000002",
          "start_at": "2026-02-03T09:00:00Z",
          "minutes": 60,
          "status": "requested",
          "note": ""
        }
      ],
      "Invoice": [
        {
          "id": "00000000-0000-4000-8000-000000000031",
          "appointment": "00000000-0000-4000-8000-000000000021",
          "amount_cents": 9000,
          "paid": false
        },
        {
          "id": "00000000-0000-4000-8000-000000000032",
          "appointment": "00000000-0000-4000-8000-000000000021",
          "amount_cents": 100,
          "paid": true,
          "deleted_at": "2026-01-01T00:00:00Z"
        },
        {
          "id": "00000000-0000-4000-8000-000000000033",
          "appointment": "00000000-0000-4000-8000-000000000023",
          "amount_cents": 3000,
          "paid": true
        },
        {
          "id": "00000000-0000-4000-8000-000000000034",
          "appointment": "00000000-0000-4000-8000-000000000022",
          "amount_cents": 4500,
          "paid": false
        }
      ]
    },
    "tool": "list_appointments",
    "input": {},
    "sub": "ann",
    "roles": [
      "patient"
    ],
    "idempotencyKey": "l-1"
  }
};
