// "pg-min" is pg 8.11.5 (the minimum of the peer range), installed under an alias.
declare module "pg-min" {
  import pg from "pg";
  export default pg;
}
