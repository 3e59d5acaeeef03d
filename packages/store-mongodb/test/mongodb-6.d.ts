// "mongodb-6" is the mongodb driver 6.0.0 (the minimum of the peer range), installed under an alias.
declare module "mongodb-6" {
  export * from "mongodb";
}
