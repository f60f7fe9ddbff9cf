//! A DataFusion session with a memory limit, over read-only stores.

use super::*;

/// A DataFusion session with a memory limit and read-only object stores.
pub(super) struct Session {
    pub(super) ctx: SessionContext,
    pub(super) memory_limit: String,
    /// The object stores registered, by URL (`s3://bucket`, `file://`).
    pub(super) stores: HashMap<String, RegisteredStore>,
}

/// An object store on the context, and the settings it was built with.
pub(super) struct RegisteredStore {
    /// The configuration key of the first table in it.
    pub(super) key: String,
    pub(super) storage: StorageOptions,
    pub(super) store: Arc<dyn ObjectStore>,
}

impl Session {
    pub(super) fn new(memory_limit: &Size) -> Result<Session, Failure> {
        let pool = TrackConsumersPool::new(
            FairSpillPool::new(memory_limit.bytes),
            NonZeroUsize::new(3).expect("3 is not zero"),
        );
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(pool))
            .with_disk_manager_builder(DiskManagerBuilder::default())
            .build_arc()
            .map_err(|e| Failure::Runtime(format!("cannot set up query execution: {e}")))?;
        // `SET` is refused, so DataFusion's settings come from `DATAFUSION_*`
        // environment variables (`DATAFUSION_EXECUTION_TARGET_PARTITIONS=4`).
        let mut config = SessionConfig::from_env()
            .map_err(|e| Failure::Usage(format!("a DATAFUSION_* variable: {e}")))?
            .with_information_schema(true);
        // Files in subdirectories that are not `key=value` partitions are
        // not part of the table (the default, said out loud).
        config
            .options_mut()
            .execution
            .listing_table_ignore_subdirectory = true;
        // Flumen's own functions, as in pipelines: `key_bucket`.
        let ctx = SessionContext::new_with_config_rt(config, runtime);
        ctx.register_udf(flumen_core::sql::key_bucket());
        Ok(Session {
            ctx,
            memory_limit: memory_limit.to_string(),
            stores: Default::default(),
        })
    }

    /// The names of the tables and of their columns, for completion.
    pub(super) async fn names(&self) -> Vec<String> {
        let mut names = Vec::new();
        let Some(catalog) = self.ctx.catalog("datafusion") else {
            return names;
        };
        let Some(schema) = catalog.schema("public") else {
            return names;
        };
        for table in schema.table_names() {
            if let Ok(Some(provider)) = schema.table(&table).await {
                names.extend(provider.schema().fields().iter().map(|f| f.name().clone()));
            }
            names.push(table);
        }
        names
    }

    pub(super) async fn register_all(&mut self, specs: Vec<TableSpec>) -> Result<(), Failure> {
        for spec in specs {
            self.register(spec).await?;
        }
        Ok(())
    }

    /// Registers one table: its object store (once per bucket), then a
    /// listing table over its Parquet files with inferred partitions.
    pub(super) async fn register(&mut self, spec: TableSpec) -> Result<(), Failure> {
        let TableSpec {
            name,
            location,
            storage,
            key,
            from_sink,
        } = spec;
        let resolved =
            resolve(&location, &storage, &key).map_err(|e| Failure::Usage(e.to_string()))?;
        let table_error = |message: String| format!("table `{name}` at `{location}`: {message}");
        let mut url = match Url::parse(&location) {
            Ok(url) if url.scheme().len() > 1 => url,
            // A local path, as `resolve` reads it.
            _ => std::path::absolute(&location)
                .ok()
                .and_then(|path| Url::from_file_path(path).ok())
                .ok_or_else(|| Failure::Usage(table_error("not a usable path".into())))?,
        };
        let store_url = ListingTableUrl::try_new(url.clone(), None)
            .map_err(|e| Failure::Usage(table_error(e.to_string())))?
            .object_store();
        let store = self.store(store_url.as_ref(), &key, &storage, resolved.store)?;

        // A single file is read as it is; anything else is a directory
        // (or prefix) whose files make the table.
        let is_file = !resolved.path.as_ref().is_empty()
            && match store.head(&resolved.path).await {
                Ok(_) => true,
                Err(object_store::Error::NotFound { .. }) => false,
                Err(e) => {
                    return Err(Failure::Runtime(table_error(format!(
                        "cannot reach the location: {e}"
                    ))));
                }
            };
        if !is_file && !url.path().ends_with('/') {
            url.set_path(&format!("{}/", url.path()));
        }
        let table_url = ListingTableUrl::try_new(url, None)
            .map_err(|e| Failure::Usage(table_error(e.to_string())))?;

        let state = self.ctx.state();
        // In a directory, `*.parquet` files; a file named on its own is read
        // whatever its name.
        let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
            .with_file_extension(if is_file { "" } else { ".parquet" });
        let partitions = options
            .infer_partitions(&state, &table_url)
            .await
            .map_err(|e| registration_failure(&table_error, e))?;
        // Partition values are strings, as the directory names are.
        let options = options.with_table_partition_cols(
            partitions
                .into_iter()
                .map(|column| (column, DataType::Utf8))
                .collect(),
        );
        let config = ListingTableConfig::new(table_url).with_listing_options(options);
        let config = match config.infer_schema(&state).await {
            Ok(config) => config,
            Err(e) if no_files(&e) => {
                let message = "holds no Parquet files (names starting with `_` or `.` are \
                               skipped: they are staged or in progress)";
                if from_sink {
                    tracing::warn!("{}; no table registered", table_error(message.into()));
                    return Ok(());
                }
                return Err(Failure::Usage(table_error(message.into())));
            }
            Err(e) => return Err(registration_failure(&table_error, e)),
        };
        let table =
            ListingTable::try_new(config).map_err(|e| registration_failure(&table_error, e))?;
        self.ctx
            .register_table(TableReference::bare(name.as_str()), Arc::new(table))
            .map_err(|e| Failure::Usage(table_error(e.to_string())))?;
        Ok(())
    }

    /// The store for `url` (`s3://bucket`, `file://`), registered on the
    /// context on first use. Tables in the same bucket share one store, so
    /// they must agree on its settings.
    pub(super) fn store(
        &mut self,
        url: &str,
        key: &str,
        storage: &StorageOptions,
        store: Arc<dyn ObjectStore>,
    ) -> Result<Arc<dyn ObjectStore>, Failure> {
        if let Some(registered) = self.stores.get(url) {
            if &registered.storage != storage {
                return Err(Failure::Usage(format!(
                    "`{key}` and `{}` are both in `{url}` but with different storage \
                     settings; flumen sql reaches one store with one set of settings",
                    registered.key
                )));
            }
            return Ok(Arc::clone(&registered.store));
        }
        let parsed = Url::parse(url).map_err(|e| Failure::Usage(format!("`{url}`: {e}")))?;
        let store: Arc<dyn ObjectStore> = Arc::new(VisibleFiles { inner: store });
        self.ctx.register_object_store(&parsed, Arc::clone(&store));
        self.stores.insert(
            url.to_string(),
            RegisteredStore {
                key: key.to_string(),
                storage: storage.clone(),
                store: Arc::clone(&store),
            },
        );
        Ok(store)
    }

    /// Plans and runs one statement, writing its result to `out`; returns
    /// the number of rows.
    pub(super) async fn run(
        &self,
        statement: DfStatement,
        format: SqlFormat,
        out: &mut Destination,
    ) -> Result<usize, Failure> {
        check_read_only(&statement).map_err(Failure::Runtime)?;
        let state = self.ctx.state();
        let plan = state
            .statement_to_plan(statement)
            .await
            .map_err(|e| self.query_failure(e))?;
        // What the check above let through cannot write either.
        SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false)
            .verify_plan(&plan)
            .map_err(|e| {
                Failure::Runtime(format!(
                    "flumen sql is read-only: the statement would write ({})",
                    e.strip_backtrace()
                ))
            })?;
        let frame = self
            .ctx
            .execute_logical_plan(plan)
            .await
            .map_err(|e| self.query_failure(e))?;
        self.write(frame, format, out).await
    }

    pub(super) async fn write(
        &self,
        frame: DataFrame,
        format: SqlFormat,
        out: &mut Destination,
    ) -> Result<usize, Failure> {
        let schema = Arc::new(frame.schema().as_arrow().clone());
        if format == SqlFormat::Table {
            let batches = frame.collect().await.map_err(|e| self.query_failure(e))?;
            let rows = batches.iter().map(|b| b.num_rows()).sum();
            let table = arrow::util::pretty::pretty_format_batches_with_schema(schema, &batches)
                .map_err(|e| Failure::Runtime(e.to_string()))?;
            out.write_all(format!("{table}\n").as_bytes())?;
            return Ok(rows);
        }
        let mut stream = frame
            .execute_stream()
            .await
            .map_err(|e| self.query_failure(e))?;
        let mut rows = 0;
        match format {
            SqlFormat::Parquet => {
                let mut writer = ArrowWriter::try_new(out.file()?, schema, None)
                    .map_err(|e| Failure::Runtime(format!("cannot write Parquet: {e}")))?;
                while let Some(batch) = stream.next().await {
                    let batch = batch.map_err(|e| self.query_failure(e))?;
                    rows += batch.num_rows();
                    writer
                        .write(&batch)
                        .map_err(|e| Failure::Runtime(format!("cannot write Parquet: {e}")))?;
                }
                writer
                    .close()
                    .map_err(|e| Failure::Runtime(format!("cannot write Parquet: {e}")))?;
            }
            SqlFormat::Csv | SqlFormat::Json => {
                let mut header = true;
                let mut buffer = Vec::new();
                while let Some(batch) = stream.next().await {
                    let batch = batch.map_err(|e| self.query_failure(e))?;
                    rows += batch.num_rows();
                    buffer.clear();
                    let encoded = if format == SqlFormat::Csv {
                        let mut writer = arrow::csv::WriterBuilder::new()
                            .with_header(header)
                            .build(&mut buffer);
                        header = false;
                        writer.write(&batch)
                    } else {
                        let mut writer = arrow::json::LineDelimitedWriter::new(&mut buffer);
                        writer.write(&batch).and_then(|()| writer.finish())
                    };
                    encoded.map_err(|e| Failure::Runtime(format!("cannot encode rows: {e}")))?;
                    out.write_all(&buffer)?;
                    if out.closed {
                        break;
                    }
                }
                // A header even when no row came.
                if header && format == SqlFormat::Csv {
                    let empty = arrow::record_batch::RecordBatch::new_empty(schema);
                    buffer.clear();
                    arrow::csv::WriterBuilder::new()
                        .with_header(true)
                        .build(&mut buffer)
                        .write(&empty)
                        .map_err(|e| Failure::Runtime(format!("cannot encode rows: {e}")))?;
                    out.write_all(&buffer)?;
                }
            }
            SqlFormat::Table => unreachable!("handled above"),
        }
        Ok(rows)
    }

    /// A failed query, with advice when it ran out of memory.
    pub(super) fn query_failure(&self, error: DataFusionError) -> Failure {
        let message = error.strip_backtrace();
        let exhausted = matches!(error.find_root(), DataFusionError::ResourcesExhausted(_))
            || message.contains("Resources exhausted");
        if exhausted {
            Failure::Runtime(format!(
                "the query needs more memory than `--memory-limit {}` allows, even spilling \
                 to disk: {message}\n  = help: raise `--memory-limit`, or make the query \
                 lighter (filter on partition columns, select fewer columns, LIMIT)",
                self.memory_limit
            ))
        } else {
            Failure::Runtime(message)
        }
    }
}

/// A registration failure: bad data or configuration is the user's to fix
/// (exit 2); an unreachable store is a failure while running (exit 1).
pub(super) fn registration_failure(
    table_error: &dyn Fn(String) -> String,
    error: DataFusionError,
) -> Failure {
    let message = table_error(error.strip_backtrace());
    match error.find_root() {
        DataFusionError::ObjectStore(_) | DataFusionError::IoError(_) => Failure::Runtime(message),
        _ => Failure::Usage(message),
    }
}

/// Whether DataFusion found no files to infer a schema from.
pub(super) fn no_files(error: &DataFusionError) -> bool {
    error.strip_backtrace().contains("No files found")
}
