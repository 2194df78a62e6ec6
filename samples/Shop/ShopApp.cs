using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Diagnostics;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;
using Shop.Choreography;
using Shop.Infrastructure;
using Shop.Inventory;
using Shop.Order;
using Shop.Payment;
using Treaty.AspNetCore.Barrier;
using Treaty.AspNetCore.Data;
using Treaty.AspNetCore.Idempotency;
using Treaty.AspNetCore.InDoubt;
using Treaty.AspNetCore.SemanticLocks;
using Treaty.AspNetCore.Signatures;
using Treaty.Client;
using Treaty.Messaging;

namespace Shop;

/// <summary>
/// Builds one Shop service (Order, Payment or Inventory) as an ASP.NET Core app, to run as its own
/// process (<c>Program.cs</c>) or in-process next to others (tests, <c>treaty demo</c>).
/// </summary>
public static class ShopApp
{
    /// <summary>The largest request body accepted (1 MiB).</summary>
    public const long MaxRequestBodyBytes = 1024 * 1024;

    /// <summary>
    /// Builds the service described by <paramref name="options"/>: creates and seeds its SQLite
    /// database on first start, binds only <see cref="ShopOptions.Urls"/>. Start it with
    /// <c>RunAsync</c>/<c>StartAsync</c>; dispose it to release the database file.
    /// </summary>
    /// <exception cref="ArgumentException">The options are invalid.</exception>
    public static WebApplication Build(ShopOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        var dataDir = Path.GetFullPath(options.DataDir, Environment.CurrentDirectory); // relative to where the user started it
        Directory.CreateDirectory(dataDir);

        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions
        {
            ApplicationName = typeof(ShopApp).Assembly.GetName().Name,
            // Not the working directory: no stray appsettings.json can rebind the service.
            ContentRootPath = AppContext.BaseDirectory,
        });
        builder.WebHost.UseUrls(options.Urls);
        builder.WebHost.ConfigureKestrel(kestrel => kestrel.Limits.MaxRequestBodySize = MaxRequestBodyBytes);
        builder.Logging.SetMinimumLevel(options.MinimumLogLevel);
        builder.Logging.AddFilter("Microsoft.AspNetCore", LogLevel.Warning);

        builder.Services.AddProblemDetails();
        builder.Services.ConfigureHttpJsonOptions(json =>
        {
            json.SerializerOptions.TypeInfoResolverChain.Insert(0, ShopJsonContext.Web);
            json.SerializerOptions.Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping;
        });
        builder.Services.AddSingleton(options);
        builder.Services.AddSingleton(options.TimeProvider);
        builder.Services.AddSingleton<FaultRegistry>();

        var (fileName, schema, seed) = options.Service switch
        {
            ShopService.Order => ("order.db", OrderStore.Schema, (Action<Microsoft.Data.Sqlite.SqliteConnection, Microsoft.Data.Sqlite.SqliteTransaction>)((_, _) => { })),
            ShopService.Payment => ("payment.db", Wallet.Schema, (c, t) => Wallet.Seed(c, t, options.SeedScale)),
            ShopService.Inventory => ("inventory.db", Stock.Schema, (c, t) => Stock.Seed(c, t, options.SeedScale)),
            _ => throw new ArgumentOutOfRangeException(nameof(options), options.Service, "Unknown service."),
        };
        var database = new ShopDatabase(Path.Combine(dataDir, fileName));
        try
        {
            database.Initialize(schema, seed);
        }
        catch
        {
            database.Dispose();
            throw;
        }

        // Registered through a factory so the container disposes it (releasing the file) on shutdown.
        builder.Services.AddSingleton(_ => database);
        // The participant kit, on the same file: its records share the Shop's transactions.
        builder.Services.AddSingleton<ParticipantDatabase>(database.Participant);
        builder.Services.AddTreatyBarrier();
        builder.Services.AddTreatySemanticLocks();
        builder.Services.AddTreatyCallbackVerification(verification => verification.Secret = options.CallbackSecret);
        if (options.CoordinatorUrl is { } coordinator)
        {
            // A 2PC/3PC branch that voted YES and hears no outcome asks the coordinator (and 3PC's
            // termination rule decides alone when it cannot be reached).
            builder.Services.AddTreatyInDoubtResolver(resolver =>
            {
                resolver.Coordinator = new Uri(coordinator.TrimEnd('/') + "/");
                resolver.After = options.InDoubtAfter;
                resolver.ApiKey = options.CoordinatorKey;
                resolver.PollInterval = Clamp(options.InDoubtAfter / 4, TimeSpan.FromMilliseconds(100), TimeSpan.FromSeconds(5));
                resolver.FirstRecheckDelay = Clamp(options.InDoubtAfter / 2, TimeSpan.FromMilliseconds(200), TimeSpan.FromSeconds(5));
                resolver.RequestTimeout = Clamp(options.InDoubtAfter / 2, TimeSpan.FromMilliseconds(500), TimeSpan.FromSeconds(10));
            });
        }

        var choreography = ShopChoreography.Enabled(options);
        if (choreography)
        {
            ShopChoreography.Add(builder, options);
        }

        if (options.Service == ShopService.Order)
        {
            builder.Services.AddTreatyIdempotency();
            builder.Services.AddSingleton(_ => new TreatyClient(new Uri(options.CoordinatorUrl!), options.CoordinatorKey));
            builder.Services.AddSingleton<OrderTransaction>();
            builder.Services.AddSingleton<OrderService>();
            builder.Services.AddSingleton<OrderOutbox>();
            builder.Services.AddHostedService(provider => provider.GetRequiredService<OrderOutbox>());
        }

        var app = builder.Build();
        app.UseExceptionHandler(new ExceptionHandlerOptions
        {
            // A body over the size limit, a bad request line: the client's fault, not a 500.
            StatusCodeSelector = e => e is BadHttpRequestException bad ? bad.StatusCode : StatusCodes.Status500InternalServerError,
        });
        app.UseStatusCodePages();
        if (options.EnableFaults)
        {
            app.UseFaults();
        }

        // Branch endpoints (RequireTreatySignature) answer 401 to a call whose signature does not
        // verify, when the service has a callback secret; nothing runs for it.
        app.UseTreatyCallbackVerification();
        if (options.Service == ShopService.Order)
        {
            app.Use(OrderService.AbortReasonMiddleware);
            app.UseTreatyIdempotency();
        }

        var name = options.Service.ToString().ToLowerInvariant();
        app.MapGet("/healthz", async (CancellationToken ct) =>
        {
            await database.ReadAsync(async connection =>
            {
                await using var ping = Sql.Command(connection, null, "SELECT 1");
                return await ping.ExecuteScalarAsync(ct);
            }, ct);
            return Results.Json(new HealthView("ok", name), ShopJsonContext.Web.HealthView);
        });

        if (choreography)
        {
            app.MapTreatyMessaging();
            if (options.CallbackSecret is not null)
            {
                // The coordinator's dead-letter view (treaty serve --dead-letter-source NAME=URL) reads
                // and replays this service's dead letters, signed with the callback secret.
                app.MapTreatyDeadLetters();
            }
        }

        switch (options.Service)
        {
            case ShopService.Order:
                OrderService.Map(app);
                break;
            case ShopService.Payment:
                WalletQueries.Map(app, database);
                PaymentEndpoints.Map(app, new Wallet(options.TimeProvider));
                break;
            case ShopService.Inventory:
                StockQueries.Map(app, database);
                InventoryEndpoints.Map(app, new Stock(options.TimeProvider));
                break;
        }

        return app;
    }

    private static TimeSpan Clamp(TimeSpan value, TimeSpan min, TimeSpan max) => value < min ? min : value > max ? max : value;
}
