using System.Text.Json;
using Microsoft.AspNetCore.Diagnostics;
using Microsoft.AspNetCore.Http.Json;
using Treaty.Core.Contracts;
using Treaty.Core.Engine;
using Treaty.Core.Model;
using Treaty.Core.Protocols;
using Treaty.Core.Serialization;
using Treaty.Server.Alerts;
using Treaty.Server.Dashboard;
using Treaty.Server.Security;
using Treaty.Storage.PostgreSql;
using Treaty.Storage.Sqlite;

namespace Treaty.Server;

/// <summary>Builds and wires the coordinator host.</summary>
public static class TreatyServer
{
    /// <summary>Creates the coordinator application: API, engine, SQLite store, recovery.</summary>
    /// <param name="options">Settings; validated here.</param>
    /// <param name="configure">Last say over the builder (logging, extra services).</param>
    public static WebApplication CreateApp(TreatyServerOptions options, Action<WebApplicationBuilder>? configure = null)
    {
        options.Validate();
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { ApplicationName = typeof(TreatyServer).Assembly.GetName().Name });
        builder.WebHost.UseUrls(options.Urls);
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.Limits.MaxRequestBodySize = options.MaxRequestBodyBytes;
            k.AddServerHeader = false;
        });
        // Per-request lines from the framework would drown the coordinator's own log under load.
        builder.Logging.AddFilter("Microsoft.AspNetCore", LogLevel.Warning);
        builder.Services.AddTreatyServer(options);
        configure?.Invoke(builder);

        var app = builder.Build();
        app.UseExceptionHandler(errors => errors.Run(WriteUnhandledAsync));
        app.UseStatusCodePages(WriteStatusCodeAsync);
        app.UseTreatySecurity(options);
        app.MapTreatyApi();
        DeadLetters.DeadLettersApi.MapTreatyDeadLetterApi(app);
        app.MapTreatyDashboard();
        app.MapGet("/healthz", () => Results.Text("ok")).ExcludeFromDescription().AllowAnonymous();
        app.MapGet("/readyz", async (ITransactionStore store, CancellationToken ct) =>
        {
            await store.GetAsync("readyz", ct);
            return Results.Text("ready");
        }).ExcludeFromDescription().AllowAnonymous();
        app.MapOpenApi("/openapi/{documentName}.json").RequireTreatyClient().Add(endpoint =>
        {
            // The OpenAPI package answers an unknown document name in plain text; every error here is problem+json.
            var serve = endpoint.RequestDelegate!;
            endpoint.RequestDelegate = context => context.GetRouteValue("documentName") is "v1"
                ? serve(context)
                : Problems.Create(StatusCodes.Status404NotFound, ProblemTypes.NotFound, "Not found", "The OpenAPI document is /openapi/v1.json.", context).ExecuteAsync(context);
        });
        return app;
    }

    /// <summary>Registers the engine, every protocol, the store (SQLite or PostgreSQL), the HTTP invoker and recovery.</summary>
    public static IServiceCollection AddTreatyServer(this IServiceCollection services, TreatyServerOptions options)
    {
        options.Validate();
        services.AddSingleton(options);
        services.TryAddSingletonTimeProvider();
        services.AddSingleton<IRandomSource>(_ => new SeededRandomSource(Random.Shared.Next()));
        if (options.Store == TreatyServerDefaults.PostgresStore)
        {
            services.AddTreatyPostgreSqlStore(store => store.ConnectionString = options.ConnectionString);
        }
        else
        {
            services.AddTreatySqliteStore(store => store.Path = Path.Combine(options.DataDir, "treaty.db"));
        }

        services.AddTreatySecurity(options);
        services.AddSingleton<IBranchInvoker, HttpBranchInvoker>();
        services.AddSingleton<DeadLetters.DeadLetterSourceClient>();
        // Every protocol is registered explicitly.
        services.AddSingleton<IProtocolMachine, SagaMachine>();
        services.AddSingleton<IProtocolMachine, TccMachine>();
        services.AddSingleton<IProtocolMachine, TwoPhaseCommitMachine>();
        services.AddSingleton<IProtocolMachine, ThreePhaseCommitMachine>();
        services.AddSingleton<IProtocolMachine, MessageMachine>();
        services.AddSingleton<IProtocolMachine>(new ChoreographyMachine(options.ChoreographyTimeout));
        services.AddSingleton<TreatyTelemetry>();
        var lease = new LeaseRequest(options.InstanceId ?? LeaseDefaults.NewOwner(), options.LeaseDuration);
        services.AddSingleton(lease);
        services.AddSingleton(sp =>
        {
            var engine = ActivatorUtilities.CreateInstance<TransactionEngine>(sp);
            sp.GetRequiredService<TreatyTelemetry>().Track(engine); // the in-flight and stuck gauges
            return engine;
        });
        services.AddHostedService<StoreInitializer>();
        services.AddHostedService<RecoveryService>();
        if (options.Retention is not null)
        {
            services.AddHostedService<RetentionService>();
        }

        if (options.AlertWebhook is null)
        {
            services.AddSingleton<IEngineObserver>(sp => sp.GetRequiredService<TreatyTelemetry>());
        }
        else
        {
            services.AddSingleton<AlertMonitor>();
            services.AddHostedService(sp => sp.GetRequiredService<AlertMonitor>());
            services.AddSingleton<IEngineObserver>(sp => new CompositeEngineObserver(sp.GetRequiredService<TreatyTelemetry>(), sp.GetRequiredService<AlertMonitor>()));
        }
        services.AddTreatyOtlpExport(options, lease.Owner);
        services.AddProblemDetails();
        services.AddOpenApi();
        services.Configure<JsonOptions>(json =>
        {
            json.SerializerOptions.TypeInfoResolverChain.Insert(0, TreatyJsonContext.Default);
            json.SerializerOptions.TypeInfoResolverChain.Insert(1, DeadLetters.DeadLetterJsonContext.Default);
            json.SerializerOptions.PropertyNamingPolicy = JsonNamingPolicy.CamelCase;
        });
        return services;
    }

    private static void TryAddSingletonTimeProvider(this IServiceCollection services)
    {
        if (!services.Any(d => d.ServiceType == typeof(TimeProvider)))
        {
            services.AddSingleton(TimeProvider.System);
        }
    }

    private static async Task WriteUnhandledAsync(HttpContext context)
    {
        var error = context.Features.Get<IExceptionHandlerFeature>()?.Error;
        var (status, type, title) = error switch
        {
            BadHttpRequestException { StatusCode: StatusCodes.Status413PayloadTooLarge } =>
                (StatusCodes.Status413PayloadTooLarge, ProblemTypes.PayloadTooLarge, "Request body too large"),
            BadHttpRequestException bad => (bad.StatusCode, ProblemTypes.Validation, "Bad request"),
            _ => (StatusCodes.Status500InternalServerError, ProblemTypes.Internal, "Internal error"),
        };
        var detail = status == StatusCodes.Status500InternalServerError ? "The server could not complete the request; nothing was changed by the failed step." : error?.Message;
        await Problems.Create(status, type, title, detail, context).ExecuteAsync(context);
    }

    private static async Task WriteStatusCodeAsync(StatusCodeContext status)
    {
        var context = status.HttpContext;
        var code = context.Response.StatusCode;
        var (type, title) = code switch
        {
            StatusCodes.Status404NotFound => (ProblemTypes.NotFound, "Not found"),
            StatusCodes.Status405MethodNotAllowed => (ProblemTypes.Validation, "Method not allowed"),
            StatusCodes.Status413PayloadTooLarge => (ProblemTypes.PayloadTooLarge, "Request body too large"),
            StatusCodes.Status415UnsupportedMediaType => (ProblemTypes.UnsupportedMediaType, "Unsupported media type"),
            _ => (ProblemTypes.Validation, "Request failed"),
        };
        await Problems.Create(code, type, title, $"{context.Request.Method} {context.Request.Path} answered {code}.", context).ExecuteAsync(context);
    }
}
