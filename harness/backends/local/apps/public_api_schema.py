"""The GraphQL schema of ``hashicorpdemoapp/public-api:v0.0.7`` (its ``schema/*.graphql``).

One copy, shared by the stand-in (`public_api`) and the contract test that
checks every query the load tests and the chaos probes send
(tests/test_graphql_contract.py): a query the real server rejects must be
rejected here too, so the schema is the real one, field for field, including
the parts the stand-in does not resolve (orders, mutations).

Kept as plain text with no imports: the app imports it on start-up.
"""

from __future__ import annotations

SCHEMA_SDL = """
directive @isAuthenticated on FIELD_DEFINITION
directive @hasRole(role: Role!) on FIELD_DEFINITION

enum Role {
  ADMIN
  USER
}

enum Currency {
  USD
  EUR
  GBP
}

type Query {
  version: String!
  coffee(id: String!): Coffee
  coffees: [Coffee!]!
  coffeeIngredients(coffeeID: String!): [Ingredient]
  orders: [Order]
  order(id: String!): Order
}

type Mutation {
  signUp(auth: UserAuth!): AuthResponse!
  login(auth: UserAuth!): AuthResponse!
  signOut: Boolean! @isAuthenticated
  order(items: [OrderItemInput!]): Order
  pay(details: PaymentDetails): PaymentResponse!
}

type Coffee {
  id: ID!
  name: String
  image: String
  teaser: String
  collection: String
  origin: String
  color: String
  description: String
  price(currency: Currency = USD): Float
  ingredients: [Ingredient]
}

type Ingredient {
  id: ID!
  name: String
  quantity: Int
  unit: String
}

type Order {
  id: ID!
  items: [OrderItem]
}

type OrderItem {
  coffee: Coffee!
  quantity: Int!
}

type User {
  id: ID!
  name: String
}

type AuthResponse {
  userId: Int!
  username: String!
  token: String!
}

type PaymentResponse {
  id: String!
  message: String!
  card_plaintext: String!
  card_ciphertext: String!
}

input CoffeeInput {
  id: ID!
}

input OrderItemInput {
  coffee: CoffeeInput!
  quantity: Int!
}

input UserAuth {
  username: String!
  password: String!
}

input PaymentDetails {
  name: String!
  type: String!
  number: String!
  expiry: String!
  cv2: Int!
  amount: Float!
}
"""
