-- Least privilege for one service's database: an owner role that runs the migrations (DDL) and an app role
-- for the service's processes, which may read and write the rows of the owner's tables and nothing else.
-- Run as a superuser, connected to any other database, once per service database; re-running it is harmless:
--   OWNER_PASSWORD=… APP_PASSWORD=… psql -v ON_ERROR_STOP=1 -v db=orders -v owner=orders_owner \
--       -v app=orders_app -f roles.sql
-- The passwords come from the environment (\getenv), never the command line. deploy/postgres/init-databases.sh
-- runs it for both databases at the first start of the compose postgres service, and
-- tests/integration/test_database_roles.py on throwaway names.
--
-- What the app role is left with, and why that is enough: CONNECT on its own database only (CONNECT and
-- TEMPORARY are revoked from PUBLIC); USAGE on the public schema but not CREATE; SELECT, INSERT, UPDATE,
-- DELETE on every table and USAGE, SELECT (nextval) on every sequence the owner has made or will make
-- (ALTER DEFAULT PRIVILEGES), so later migrations need no grant of their own. No TRUNCATE, REFERENCES or
-- TRIGGER, no DDL on anything, no temporary tables. The processes need no more: LISTEN/NOTIFY, advisory
-- locks, set_config('statement_timeout', …), pg_stat_activity and pg_terminate_backend on sessions of the
-- same role (the relays retiring a stalled relay) are open to every role; nothing creates temporary tables.
\getenv owner_password OWNER_PASSWORD
\getenv app_password APP_PASSWORD

SELECT format('CREATE ROLE %I', :'owner') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'owner')
\gexec
SELECT format('CREATE ROLE %I', :'app') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'app')
\gexec
ALTER ROLE :"owner" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    PASSWORD :'owner_password';
ALTER ROLE :"app" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    PASSWORD :'app_password';

SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'owner')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db')
\gexec
ALTER DATABASE :"db" OWNER TO :"owner";
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"db" TO :"app";

\connect :db
ALTER SCHEMA public OWNER TO :"owner";
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO :"app";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO :"app";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES TO :"app";
-- Tables already there (a database migrated before this ran, by its owner).
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO :"app";
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO :"app";
