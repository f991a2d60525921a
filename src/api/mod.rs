pub mod appenvironment;
