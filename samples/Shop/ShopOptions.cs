using Microsoft.Extensions.Logging;

namespace Shop;

/// <summary>Which of the three Shop services a process (or an in-process host) runs.</summary>
public enum ShopService
{
    /// <summary>Checkout and orders; starts the transactions.</summary>
    Order,
    /// <summary>Customer wallets.</summary>
    Payment,
    /// <summary>Stock.</summary>
    Inventory,
}

/// <summary>What carries the choreographed checkout's events between the services (<c>--transport</c>).</summary>
public enum ShopTransport
{
    /// <summary>The messaging kit's embedded transport: loopback HTTP between the services' addresses.</summary>
    Embedded,
    /// <summary>RabbitMQ (<c>--rabbitmq URL</c>): one exchange, one queue per service.</summary>
    RabbitMq,
}

/// <summary>How to start one Shop service.</summary>
public sealed class ShopOptions
{
    /// <summary>The service to run.</summary>
    public required ShopService Service { get; init; }

    /// <summary>The URLs to bind, separated by ';' (e.g. <c>http://127.0.0.1:5001</c>); nothing else is bound.</summary>
    public required string Urls { get; init; }

    /// <summary>The directory of the service's SQLite database (created when missing).</summary>
    public required string DataDir { get; init; }

    /// <summary>The Treaty coordinator (Order service only; required there).</summary>
    public string? CoordinatorUrl { get; init; }

    /// <summary>The Payment service, as the coordinator should call it (Order service only; required there).</summary>
    public string? PaymentUrl { get; init; }

    /// <summary>The Inventory service, as the coordinator should call it (Order service only; required there).</summary>
    public string? InventoryUrl { get; init; }

    /// <summary>
    /// The Order service (<c>--order</c>). With the three services' URLs and the coordinator, a
    /// service also runs the choreographed checkout: its events travel between them over loopback HTTP.
    /// </summary>
    public string? OrderUrl { get; init; }

    /// <summary>
    /// This service's address as the coordinator should call it back (Order service). Default: the
    /// first address the server bound, so <c>http://127.0.0.1:0</c> works too.
    /// </summary>
    public string? PublicUrl { get; init; }

    /// <summary>
    /// The secret the coordinator signs branch calls with (<c>treaty serve --callback-secret</c>);
    /// when set, every branch endpoint requires a valid <c>Treaty-Signature</c> (401 otherwise).
    /// At least 16 characters. Never logged.
    /// </summary>
    public string? CallbackSecret { get; init; }

    /// <summary>
    /// The coordinator's client key (<c>treaty serve --api-key</c>), sent as <c>Authorization: Bearer</c>
    /// by the Order service's client and the in-doubt resolver; null for a coordinator without keys.
    /// <c>--coordinator-key</c>, or <c>TREATY_COORDINATOR_KEY</c> (out of the process list). Never logged.
    /// </summary>
    public string? CoordinatorKey { get; init; }

    /// <summary>
    /// How long a transaction may leave this service without its outcome before the service asks
    /// the coordinator: the participant kit's in-doubt resolver (2PC/3PC branches that voted YES;
    /// 3PC's termination rule decides alone when the coordinator is unreachable) and the Order
    /// service's reconciliation of PENDING orders. Default 30 seconds; only with a coordinator URL.
    /// </summary>
    public TimeSpan InDoubtAfter { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>The choreography's transport (<c>--transport embedded|rabbitmq</c>); embedded by default.</summary>
    public ShopTransport Transport { get; init; } = ShopTransport.Embedded;

    /// <summary>The RabbitMQ broker (<c>--rabbitmq amqp://user:password@host:port/vhost</c>); required with <c>--transport rabbitmq</c>.</summary>
    public string? RabbitMqUri { get; init; }

    /// <summary>Exposes <c>/_faults</c> (fault injection and call counters) for tests and the demo.</summary>
    public bool EnableFaults { get; init; }

    /// <summary>
    /// Multiplies the seeded balances and stock (<c>--seed-scale N</c>, 1 to 1,000,000; 1 by default), so a
    /// load generator can run many checkouts against one Shop. Applied when the database is first created;
    /// the per-checkout limits stay as they are.
    /// </summary>
    public int SeedScale { get; init; } = 1;

    /// <summary>The clock (tests may pass a manual one).</summary>
    public TimeProvider TimeProvider { get; init; } = TimeProvider.System;

    /// <summary>The minimum level of the console log.</summary>
    public LogLevel MinimumLogLevel { get; init; } = LogLevel.Information;

    /// <summary>The command line usage.</summary>
    public const string Usage =
        "usage: Shop --service order|payment|inventory --urls URL --data-dir DIR " +
        "[--coordinator URL --payment URL --inventory URL] [--order URL] [--public-url URL] [--callback-secret SECRET] [--coordinator-key KEY] [--in-doubt-after SECONDS] [--transport embedded|rabbitmq] [--rabbitmq URL] [--seed-scale N] [--faults]";

    /// <summary>The environment variable read when <c>--coordinator-key</c> is not given.</summary>
    public const string CoordinatorKeyVariable = "TREATY_COORDINATOR_KEY";

    /// <summary>The environment variable read when <c>--callback-secret</c> is not given (keeps the secret out of the process list).</summary>
    public const string CallbackSecretVariable = "TREATY_CALLBACK_SECRET";

    /// <summary>Shortest accepted callback secret (the coordinator enforces the same).</summary>
    public const int MinCallbackSecretLength = 16;

    /// <summary>Reads the command line (<c>--name value</c> or <c>--name=value</c>).</summary>
    /// <exception cref="ArgumentException">An unknown, missing or malformed argument; the message says which.</exception>
    public static ShopOptions Parse(IReadOnlyList<string> args) =>
        Parse(args, Environment.GetEnvironmentVariable(CallbackSecretVariable));

    /// <summary>Reads the command line; <paramref name="secretFromEnvironment"/> is used when <c>--callback-secret</c> is not given.</summary>
    /// <exception cref="ArgumentException">An unknown, missing or malformed argument; the message says which.</exception>
    public static ShopOptions Parse(IReadOnlyList<string> args, string? secretFromEnvironment)
    {
        ArgumentNullException.ThrowIfNull(args);
        var values = new Dictionary<string, string>(StringComparer.Ordinal);
        var faults = false;
        for (var i = 0; i < args.Count; i++)
        {
            var arg = args[i];
            if (arg == "--faults")
            {
                faults = true;
                continue;
            }

            string name;
            string value;
            var equals = arg.IndexOf('=', StringComparison.Ordinal);
            if (arg.StartsWith("--", StringComparison.Ordinal) && equals > 0)
            {
                name = arg[2..equals];
                value = arg[(equals + 1)..];
            }
            else if (arg.StartsWith("--", StringComparison.Ordinal) && i + 1 < args.Count)
            {
                name = arg[2..];
                value = args[++i];
            }
            else
            {
                throw new ArgumentException($"Unexpected argument '{arg}'.");
            }

            if (name is not ("service" or "urls" or "data-dir" or "coordinator" or "payment" or "inventory" or "order" or "public-url" or "callback-secret" or "coordinator-key" or "in-doubt-after" or "transport" or "rabbitmq" or "seed-scale"))
            {
                throw new ArgumentException($"Unknown option '--{name}'.");
            }

            values[name] = value;
        }

        if (!values.TryGetValue("service", out var serviceText))
        {
            throw new ArgumentException("--service is required.");
        }

        var service = serviceText switch
        {
            "order" => ShopService.Order,
            "payment" => ShopService.Payment,
            "inventory" => ShopService.Inventory,
            _ => throw new ArgumentException($"--service must be order, payment or inventory, not '{serviceText}'."),
        };

        var options = new ShopOptions
        {
            Service = service,
            Urls = values.GetValueOrDefault("urls") ?? throw new ArgumentException("--urls is required."),
            DataDir = values.GetValueOrDefault("data-dir") ?? throw new ArgumentException("--data-dir is required."),
            CoordinatorUrl = values.GetValueOrDefault("coordinator"),
            PaymentUrl = values.GetValueOrDefault("payment"),
            InventoryUrl = values.GetValueOrDefault("inventory"),
            OrderUrl = values.GetValueOrDefault("order"),
            PublicUrl = values.GetValueOrDefault("public-url"),
            CallbackSecret = values.GetValueOrDefault("callback-secret") is { Length: > 0 } flag
                ? flag
                : string.IsNullOrEmpty(secretFromEnvironment) ? null : secretFromEnvironment,
            CoordinatorKey = values.GetValueOrDefault("coordinator-key") is { Length: > 0 } key
                ? key
                : Environment.GetEnvironmentVariable(CoordinatorKeyVariable) is { Length: > 0 } fromEnvironment ? fromEnvironment : null,
            Transport = values.GetValueOrDefault("transport") switch
            {
                null or "embedded" => ShopTransport.Embedded,
                "rabbitmq" => ShopTransport.RabbitMq,
                var other => throw new ArgumentException($"--transport must be embedded or rabbitmq, not '{other}'."),
            },
            RabbitMqUri = values.GetValueOrDefault("rabbitmq"),
            EnableFaults = faults,
            SeedScale = values.GetValueOrDefault("seed-scale") is { } scale
                ? int.TryParse(scale, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var factor) && factor is >= 1 and <= 1_000_000
                    ? factor
                    : throw new ArgumentException($"--seed-scale must be a whole number from 1 to 1000000, not '{scale}'.")
                : 1,
            InDoubtAfter = values.GetValueOrDefault("in-doubt-after") is { } after
                ? double.TryParse(after, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out var seconds) && seconds is > 0 and <= 86_400
                    ? TimeSpan.FromSeconds(seconds)
                    : throw new ArgumentException($"--in-doubt-after must be a number of seconds from 0 to 86400, not '{after}'.")
                : TimeSpan.FromSeconds(30),
        };
        options.Validate();
        return options;
    }

    /// <summary>Checks the options at start, so a misconfigured service fails before it serves anything.</summary>
    /// <exception cref="ArgumentException">What is wrong.</exception>
    public void Validate()
    {
        if (string.IsNullOrWhiteSpace(Urls))
        {
            throw new ArgumentException("Urls is required.");
        }

        foreach (var url in Urls.Split(';', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            RequireHttpUrl(url, "--urls");
        }

        if (string.IsNullOrWhiteSpace(DataDir))
        {
            throw new ArgumentException("DataDir is required.");
        }

        if (OrderUrl is not null)
        {
            RequireHttpUrl(OrderUrl, "--order");
        }

        if (PublicUrl is not null)
        {
            RequireHttpUrl(PublicUrl, "--public-url");
        }

        if (CallbackSecret is not null && (CallbackSecret.Length < MinCallbackSecretLength || string.IsNullOrWhiteSpace(CallbackSecret)))
        {
            // The message never shows the secret.
            throw new ArgumentException($"--callback-secret must be at least {MinCallbackSecretLength} characters.");
        }

        if (CoordinatorUrl is not null)
        {
            RequireHttpUrl(CoordinatorUrl, "--coordinator");
        }

        if (Transport == ShopTransport.RabbitMq)
        {
            if (string.IsNullOrWhiteSpace(RabbitMqUri))
            {
                throw new ArgumentException("--transport rabbitmq needs the broker: --rabbitmq amqp://user:password@host:port/vhost.");
            }

            if (!Uri.TryCreate(RabbitMqUri, UriKind.Absolute, out var broker) || broker.Scheme is not ("amqp" or "amqps"))
            {
                // The URL may carry a password: the message does not repeat it.
                throw new ArgumentException("--rabbitmq must be an absolute amqp:// or amqps:// URL.");
            }

            RequireHttpUrl(CoordinatorUrl, "--transport rabbitmq: --coordinator");
        }
        else if (RabbitMqUri is not null)
        {
            throw new ArgumentException("--rabbitmq is only used with --transport rabbitmq.");
        }

        if (InDoubtAfter <= TimeSpan.Zero)
        {
            throw new ArgumentException("--in-doubt-after must be positive.");
        }

        if (Service == ShopService.Order)
        {
            RequireHttpUrl(CoordinatorUrl, "--coordinator");
            RequireHttpUrl(PaymentUrl, "--payment");
            RequireHttpUrl(InventoryUrl, "--inventory");
        }
    }

    private static void RequireHttpUrl(string? url, string option)
    {
        if (string.IsNullOrWhiteSpace(url))
        {
            throw new ArgumentException($"{option} is required.");
        }

        // Kestrel accepts wildcard hosts ("http://*:5000", "http://+:5000") that Uri does not parse.
        var parsable = url.Replace("://*", "://localhost", StringComparison.Ordinal).Replace("://+", "://localhost", StringComparison.Ordinal);
        if (!Uri.TryCreate(parsable, UriKind.Absolute, out var uri) || (uri.Scheme != Uri.UriSchemeHttp && uri.Scheme != Uri.UriSchemeHttps))
        {
            throw new ArgumentException($"{option} must be an absolute http(s) URL, not '{url}'.");
        }
    }
}
