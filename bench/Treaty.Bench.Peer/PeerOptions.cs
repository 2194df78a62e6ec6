using System.Globalization;

namespace Treaty.Bench.Peer;

/// <summary>The command line, as `treaty bench --peer masstransit` passes it (see docs/benchmarks.md).</summary>
internal sealed record PeerOptions
{
    public const string Usage = """
        usage: Treaty.Bench.Peer (--participant URL | --self-participant) --json FILE
               [--branches 3] [--concurrency 64] [--duration 10] [--warmup 3] [--rabbitmq amqp://user:pass@127.0.0.1:PORT/]
        """;

    /// <summary>The no-op participant's base URL, ending in '/'; null with <see cref="SelfParticipant"/>.</summary>
    public Uri? Participant { get; init; }

    public bool SelfParticipant { get; init; }

    public int Branches { get; init; } = 3;

    public int Concurrency { get; init; } = 64;

    public int DurationSeconds { get; init; } = 10;

    public int WarmupSeconds { get; init; } = 3;

    public string JsonFile { get; init; } = "";

    /// <summary>An existing broker; null starts a throw-away node on loopback.</summary>
    public Uri? RabbitMq { get; init; }

    /// <summary>Parses the arguments; an error is a message for the user, never an exception.</summary>
    public static (PeerOptions? Options, string? Error) Parse(IReadOnlyList<string> args)
    {
        var options = new PeerOptions();
        for (var i = 0; i < args.Count; i++)
        {
            var name = args[i];
            if (name == "--self-participant")
            {
                options = options with { SelfParticipant = true };
                continue;
            }

            if (i + 1 >= args.Count)
                return (null, $"{name}: a value is missing");
            var value = args[++i];
            switch (name)
            {
                case "--participant":
                    // A trailing slash, so that relative paths resolve under the URL's own path.
                    if (!Uri.TryCreate(value.EndsWith('/') ? value : value + "/", UriKind.Absolute, out var participant) || participant.Scheme is not ("http" or "https"))
                        return (null, $"--participant: '{value}' is not an http(s) URL");
                    options = options with { Participant = participant };
                    break;
                case "--rabbitmq":
                    if (!Uri.TryCreate(value, UriKind.Absolute, out var rabbitMq) || rabbitMq.Scheme is not ("amqp" or "amqps"))
                        return (null, $"--rabbitmq: '{value}' is not an amqp:// URL");
                    options = options with { RabbitMq = rabbitMq };
                    break;
                case "--json":
                    options = options with { JsonFile = value };
                    break;
                case "--branches" or "--concurrency" or "--duration" or "--warmup":
                    if (!int.TryParse(value, NumberStyles.None, CultureInfo.InvariantCulture, out var number) || (number == 0 && name != "--warmup"))
                        return (null, $"{name}: '{value}' is not a {(name == "--warmup" ? "non-negative" : "positive")} integer");
                    options = name switch
                    {
                        "--branches" => options with { Branches = number },
                        "--concurrency" => options with { Concurrency = number },
                        "--duration" => options with { DurationSeconds = number },
                        _ => options with { WarmupSeconds = number },
                    };
                    break;
                default:
                    return (null, $"unknown option '{name}'");
            }
        }

        if (options.SelfParticipant == (options.Participant is not null))
            return (null, "give exactly one of --participant URL and --self-participant");
        if (options.JsonFile.Length == 0)
            return (null, "--json FILE is required");
        return (options, null);
    }
}
